"""The retrain flow's retry policy: transient failures are retried with backoff, bad data never."""

from __future__ import annotations

import pytest
from prefect import flow, task
from prefect.testing.utilities import prefect_test_harness

from flows.retrain import RETRY_POLICY
from pipeline.runs.workspace import StageFailed, TransientFailure


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_test_harness():
        yield


def _flaky(first_error: Exception):
    calls = []

    @task(**{**RETRY_POLICY, "retry_delay_seconds": 0})
    def stage() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise first_error
        return len(calls)

    @flow
    def one_stage() -> int:
        return stage()

    return one_stage, calls


def test_transient_failure_is_retried():
    run, calls = _flaky(TransientFailure("S3 said SlowDown"))
    assert run() == 2 and len(calls) == 2


def test_bad_data_is_not_retried():
    run, calls = _flaky(StageFailed("validate failed (exit 2)"))
    with pytest.raises(StageFailed):
        run()
    assert len(calls) == 1
