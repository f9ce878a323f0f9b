"""A deadline that always ends a test, even one stuck in C code that never gives back the GIL.

pytest-timeout's signal cannot interrupt a nogil ring loop (or a spin on a racing reserve) on
another thread, and a thread it cannot stop keeps the worker alive after the test. ``in_child``
runs the test body in a forked child instead: the parent waits up to the deadline, then kills
the child with SIGKILL and fails the test. A failure in the child comes back with its traceback.
"""
from __future__ import annotations

import functools
import os
import select
import signal
import time
import traceback

import pytest

_SKIP = b"SKIP\n"


def _child(fn, args, kwargs, w: int) -> None:
    code = 0
    try:
        fn(*args, **kwargs)
        msg = b""
    except pytest.skip.Exception as exc:
        msg = _SKIP + str(exc).encode()
    except BaseException as exc:   # every outcome goes back to the parent, which reports it
        msg = "".join(traceback.format_exception(exc)).encode()
        code = 1
    try:
        view = memoryview(msg)
        while view:
            view = view[os.write(w, view):]
    finally:
        os._exit(code)


def in_child(deadline: float):
    """Decorator: run the test in a child process that is SIGKILLed after ``deadline`` seconds."""
    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                _child(fn, args, kwargs, w)
            os.close(w)
            chunks = []
            end = time.monotonic() + deadline
            try:
                while True:
                    left = end - time.monotonic()
                    if left <= 0 or not select.select([r], [], [], left)[0]:
                        os.kill(pid, signal.SIGKILL)
                        os.waitpid(pid, 0)
                        pytest.fail(f"{fn.__name__} did not end within {deadline:g} s (a hung thread or nogil "
                                    f"loop): its child process was killed", pytrace=False)
                    data = os.read(r, 65536)
                    if not data:
                        break
                    chunks.append(data)
            finally:
                os.close(r)
            _pid, status = os.waitpid(pid, 0)
            msg = b"".join(chunks)
            if msg.startswith(_SKIP):
                pytest.skip(msg[len(_SKIP):].decode(errors="replace"))
            if status != 0:
                why = msg.decode(errors="replace") or f"the child process ended with wait status {status}"
                pytest.fail(f"{fn.__name__} failed in its child process:\n{why}", pytrace=False)
        return run
    return wrap
