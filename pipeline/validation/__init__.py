"""The validation gate: per-image profile (profile.py), cross-row checks (checks.py), the Great
Expectations suite (suite.py), figures and the summary (figures.py, report.py). Stage: pipeline/validate.py."""
