"""Why the controller shares one thread with its producers (docs/architecture.md).

Measures, in the same run, a 4 KiB write through the in-process controller on the
calling thread against one round trip of a request between two Python threads.
The ratio (hop / request) says how many requests one hand-off costs."""
import collections
import threading
import time

from splitpoint import config as cfgmod
from splitpoint.firmware.controller import Controller

N = 20000


def _hop_round_trip(n: int) -> float:
    req, rep, queue = threading.Event(), threading.Event(), collections.deque()

    def server():
        for _ in range(n):
            req.wait()
            req.clear()
            queue.popleft()
            rep.set()

    t = threading.Thread(target=server)
    t.start()
    t0 = time.perf_counter()
    for i in range(n):
        queue.append(i)
        req.set()
        rep.wait()
        rep.clear()
    dt = time.perf_counter() - t0
    t.join()
    return dt / n


def _controller_write(n: int) -> float:
    ctl = Controller.from_config(cfgmod.default())
    data = bytes(4096)
    size = 64 << 20
    try:
        for off in range(0, size, 4096):   # touch the RAM pages first
            ctl.write("lun0", off, data)
        t0 = time.perf_counter()
        for i in range(n):
            ctl.write("lun0", (i * 4096) % size, data)
        return (time.perf_counter() - t0) / n
    finally:
        ctl.close()


def test_thread_hop_vs_request(report):
    hops, writes = [], []
    for _ in range(5):   # alternate: the machine is shared and noisy
        hops.append(_hop_round_trip(N))
        writes.append(_controller_write(N))
    hop, write = sorted(hops)[2], sorted(writes)[2]
    report("thread hop round trip vs one 4 KiB controller write", "in-process controller write (same thread)",
           hop / write, ">= 1.0", hop_us=round(hop * 1e6, 2), write_us=round(write * 1e6, 2))
