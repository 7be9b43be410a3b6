"""Versioned runs: worktrees, DVC-driven stages, commits and tags, and the summary people read first.

    workspace.py  RunWorkspace: a run's git worktree, `dvc repro` per stage, commit, tag, push (run names
                  themselves: pipeline/common/run_names.py; the run of a checkout: pipeline/project.py)
    summary.py    the markdown digest of a run and its report links
    publish.py    links to a run's HTML reports that a browser follows (presigned S3, a web server, files)
    notify.py     a run's events (failed, drift detected, promoted, refused, negative verdict) to Prefect and webhooks
    confine.py    what a run started from the dashboard may change: the form's allow-list
"""
