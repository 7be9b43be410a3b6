"""Domain-shift drift: a calibrated detector, descriptor shifts in words, outlier thumbnails,
the Evidently report and the Evidently Workspace for review over time. The stage is
:mod:`pipeline.drift.stage`; submodules are imported where used (Evidently and torch load slowly)."""
