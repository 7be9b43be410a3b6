"""bench_serve's figures: percentiles and throughput of a level, and the ours/reference ratios and the goal
(the bench itself is run, not asserted)."""

from __future__ import annotations

import argparse
from collections import Counter

import pytest

from bench.bench_serve import LevelResult, compare, parse_clients, summarize


def test_summarize_counts_failures_and_takes_throughput_from_successes_only():
    result = LevelResult([i / 1000 for i in range(1, 101)], Counter({"http_503": 3, "ReadTimeout": 1}), 10.0)
    row = summarize(result)
    assert (row["requests"], row["ok"], row["failed"]) == (104, 100, 4)
    assert row["failures"] == {"ReadTimeout": 1, "http_503": 3}
    assert row["throughput_rps"] == 10.0
    assert row["p50_ms"] == pytest.approx(50.5) and row["p99_ms"] == pytest.approx(99.01)
    assert row["max_ms"] == pytest.approx(100.0)


def test_summarize_of_a_level_where_every_request_failed():
    row = summarize(LevelResult([], Counter({"ConnectError": 5}), 2.0))
    assert row["throughput_rps"] == 0.0 and row["p99_ms"] is None and row["failed"] == 5


def _row(rps, p99, failed=0):
    return {"throughput_rps": rps, "p99_ms": p99, "failed": failed}


def test_goal_needs_twice_the_throughput_a_lower_p99_and_no_failure_at_the_largest_level():
    reference = {1: _row(20, 60), 32: _row(25, 1400)}
    met = compare(reference, {1: _row(30, 40), 32: _row(60, 700)})
    assert met["goal_clients"] == 32 and met["goal_met"] is True
    assert met["levels"]["32"]["throughput_ratio"] == 2.4 and met["levels"]["32"]["p99_ratio"] == 0.5
    assert compare(reference, {1: _row(30, 40), 32: _row(45, 700)})["goal_met"] is False  # 1.8x
    assert compare(reference, {1: _row(30, 40), 32: _row(60, 1500)})["goal_met"] is False  # higher p99
    assert compare(reference, {1: _row(30, 40), 32: _row(60, 700, failed=1)})["goal_met"] is False
    assert compare(reference, {32: _row(0.0, None, failed=9)})["levels"]["32"]["p99_ratio"] is None


def test_parse_clients():
    assert parse_clients("32, 1,8,8") == [1, 8, 32]
    with pytest.raises(argparse.ArgumentTypeError):
        parse_clients("0,8")

