"""The validation gate: per-image profile (profile.py), the whole dataset's profile with the corrupt-file
policy (dataset.py), cross-row checks (checks.py), the Great Expectations suite (suite.py), the gate's
decision (gate.py) and figures (figures.py). Stage: pipeline/stages/validate.py."""
