"""tlops: a transfer-learning pipeline for small labelled image sets.

The chain's stages (the table in pipeline/stages/__init__.py, from ingest to promote) are one thin module each in
pipeline/stages/, exposing ``Args`` and ``run(params, args) -> summary``; the CLI (``tlops``), DVC and the Prefect
flows all call that same function. The work lives in the library packages beside it (data, validation, shift,
selection, freezing, training, evaluation, drift, models, promotion, prediction, runs, common); docs/architecture.md
maps each. The version is the installed distribution's (``tlops --version``, pyproject.toml).
"""
