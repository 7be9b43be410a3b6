"""tlops: a transfer-learning pipeline for small labelled image sets.

The chain's stages (the table in pipeline/stages/__init__.py, from ingest to promote) are one thin module each in
stages/, exposing ``Args`` and ``run(params, args) -> summary``; the CLI (``tlops``), DVC and the Prefect flows
all call that same function. The work lives in the library packages (docs/architecture.md maps each):

    stages/      one module per stage, the stage table, the protocol every stage after validate follows
    data/        sources, tar shards + manifest, splits, label budgets
    validation/  the per-image profile and the Great Expectations gate
    shift/       corruptions and the domain-shift 'current' set
    selection/   scoring pretrained candidates on cached embeddings
    freezing/    blocks, freezing primitives and the freeze plan
    training/    the training loop, the scratch recipe, the linear probe, torchrun
    evaluation/  metrics, the verdict against converged scratch, reports, the model card
    drift/       the calibrated drift check and its reports
    models/      the catalog, checked weights, preprocessing, LoadedModel, exports
    promotion/   the blessing, the promotion loop, registry operations
    prediction/  `tlops predict` on a batch
    serving/     `tlops serve`: the champion over HTTP, batched, following the registry, sampling for drift
    runs/        run worktrees, commits and tags, summaries, events, the dashboard form's allow-list
    common/      atomic io, logging, errors, processes, S3, devices, seeding
    registry.py  the model registry (a folder or S3): versions, aliases, history
    config.py    the one params schema
    project.py   where the project is and what dvc.yaml declares
    cli.py       the ``tlops`` command

The version is the installed distribution's (``tlops --version``, pyproject.toml).
"""
