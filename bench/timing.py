"""Helpers the benchmarks share: timing (peers are always measured alternately in one run) and free ports."""
import socket
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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
