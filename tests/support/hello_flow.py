"""A trivial flow for tests that are about the engine (a worker picking a run up), not the pipeline."""

from __future__ import annotations

from prefect import flow

__all__ = ["hello"]


@flow(name="access-hello", log_prints=True)
def hello(name: str) -> str:
    """Say hello; the flow run's result is what the test reads back."""
    print(f"hello {name}")
    return f"hello {name}"
