"""Versioned runs: worktrees, DVC-driven stages, commits and tags, and the summary people read first.

    naming.py     run names, their branches and tags: the one place they are made
    workspace.py  RunWorkspace: a run's git worktree, `dvc repro` per stage, commit, tag, push
    summary.py    the markdown digest of a run and its report links
"""
