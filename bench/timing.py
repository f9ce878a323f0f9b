"""Timing helpers the benchmarks share: peers are always measured alternately in one run."""
import time


def best_of(rounds, *fns):
    """Best wall time (s) of each fn over ``rounds`` alternating calls."""
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best
