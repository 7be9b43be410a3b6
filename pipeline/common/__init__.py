"""Helpers every stage shares, below every other package (nothing here imports the rest of pipeline/).

    io.py          atomic writes (temporary sibling, fsync, rename), JSON reads and writes
    logs.py        the ``tlops`` logger and progress bars
    errors.py      error kinds, the exit codes they map to, one-line descriptions
    processes.py   running a command so nothing it starts outlives its limit or this process; signal names
    pools.py       the stages' process pools: workers forked from a server that imported their modules once
    guard.py       the per-command guard process (parent-death signal, subreaper, group kill)
    faults.py      named kill points for the fault-injection tests
    s3.py          the one boto3 client factory, the object store, the S3 error mapping
    run_names.py   run names, their branches and tags: made and checked here only (registry versions are run names)
    device.py      cuda > mps > cpu, overridable by ``common.device``
    threads.py     each run's share of the machine's cores (``orchestrate.threads``), applied to torch, BLAS, children
    seeding.py     one seed for python, numpy and torch
    figures.py     the headless plotting backend and atomic PNG writes
    html.py        Jinja2 reports written atomically
"""
