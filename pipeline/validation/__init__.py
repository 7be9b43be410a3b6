"""The validation gate: per-image profile (profile.py), the whole dataset's profile with the corrupt-file
policy (dataset.py), cross-row checks (checks.py), the Great Expectations suite (suite.py), the gate's
decision and status (gate.py), figures (figures.py), the gate's self-contained page (report.py,
templates/) and the offline rewrite of GX's Data Docs (data_docs.py). Stage: pipeline/stages/validate.py."""
