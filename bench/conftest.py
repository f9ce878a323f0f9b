"""Benchmark harness: each benchmark measures splitpoint beside a peer in the same run
and reports a ratio with ``report(...)``; the session writes bench/results/latest.json
and latest.md. Benchmarks are never run by `make test`."""
from __future__ import annotations

import datetime
import json
import os
import platform

import pytest

RESULTS = os.path.join(os.path.dirname(__file__), "results")
_rows: list[dict] = []


def _met(ratio: float, goal: str) -> bool:
    """goal is '<= 1.5' or '>= 0.8' (ratio of ours to the peer, as each benchmark defines it)."""
    op, _, value = goal.partition(" ")
    return ratio <= float(value) if op == "<=" else ratio >= float(value)


@pytest.fixture(scope="session")
def report():
    """report(benchmark, peer, ratio, goal, **raw): record one ratio row."""
    def _report(benchmark: str, peer: str, ratio: float, goal: str, **raw):
        row = {"benchmark": benchmark, "peer": peer, "ratio": round(ratio, 4), "goal": goal,
               "met": _met(ratio, goal), "raw": raw}
        _rows.append(row)
        print(f"\n{benchmark}: ratio {ratio:.3f} (goal {goal}) {'met' if row['met'] else 'NOT met'} vs {peer}")
        return row
    return _report


def pytest_sessionfinish(session, exitstatus):
    if not _rows:
        return
    os.makedirs(RESULTS, exist_ok=True)
    doc = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.machine(),
           "cpus": os.cpu_count(), "results": _rows}
    with open(os.path.join(RESULTS, "latest.json"), "w") as fh:
        json.dump(doc, fh, indent=1)
    lines = ["| benchmark | peer | ratio | goal | met |", "|---|---|---|---|---|"]
    lines += [f"| {r['benchmark']} | {r['peer']} | {r['ratio']} | {r['goal']} | {'yes' if r['met'] else 'no'} |"
              for r in _rows]
    with open(os.path.join(RESULTS, "latest.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
