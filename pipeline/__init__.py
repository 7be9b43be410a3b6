"""tlops: a transfer-learning pipeline for small labelled image sets.

Each stage of the chain (ingest -> validate -> select -> freeze -> finetune -> baseline -> evaluate
-> drift -> promote) is one module here exposing ``run(params, paths) -> summary``; the CLI
(``tlops``), DVC and the Prefect flows all call that same function.
"""

__version__ = "0.1.0"
