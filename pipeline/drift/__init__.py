"""Domain-shift drift: a calibrated decision on images and embeddings, what moved in words, the images most unlike
the reference, the Evidently report and the Workspace for review over time. The stage is pipeline/stages/drift.py;
submodules are imported where used (Evidently and torch load slowly).

    inputs.py     what is compared for one image set: manifest rows, descriptors, embeddings, softmax
    reference.py  which reference images, how many, and what that size can detect
    detector.py   the calibrated detector: permutation MMD on embeddings plus KS on softmax outputs
    describe.py   which per-image descriptors moved, in words that say what was measured
    outliers.py   the current images most unlike the reference, and their thumbnail sheet
    analysis.py   one check: the decision, its power, the moved descriptors, the outliers
    evidently.py  the Evidently 0.7 report (HTML + JSON)
    review.py     report.html: the decision first, then what moved and the images
    workspace.py  the Evidently Workspace every run's snapshot joins (`evidently ui`)
"""
