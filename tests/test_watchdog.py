"""The watchdog of threaded and nogil tests: a body that never ends is killed at its deadline and
fails; a failing body fails with its own message; a passing body passes."""
from __future__ import annotations

import threading

import pytest

from splitpoint import pyx
from tests.watchdog import in_child


def test_a_nogil_loop_that_never_ends_is_killed_at_the_deadline():
    ring = pyx.select("ring").MPSCRing(4)
    load = pyx.select("ringload")

    @in_child(deadline=2)
    def stuck():
        # a consumer thread spinning (without the GIL when compiled) on a ring nobody fills
        t = threading.Thread(target=load.consume, args=(ring, 1, 1, 1, 1e9))
        t.start()
        t.join()
    with pytest.raises(pytest.fail.Exception, match="did not end within 2 s"):
        stuck()


def test_a_failure_in_the_child_is_reported_with_its_message():
    @in_child(deadline=30)
    def wrong():
        assert 1 + 1 == 3, "arithmetic moved"
    with pytest.raises(pytest.fail.Exception, match="arithmetic moved"):
        wrong()


def test_a_passing_body_passes_and_gets_its_arguments():
    seen = []

    @in_child(deadline=30)
    def fine(x, *, y):
        assert (x, y) == (1, 2)
        seen.append(x)   # in the child only: the parent's list stays empty
    fine(1, y=2)
    assert seen == []
