"""Shared fixtures: kernel implementations, the --board/--port option, temp devices."""
from __future__ import annotations

import pytest

from splitpoint import pyx


def pytest_addoption(parser):
    group = parser.getgroup("splitpoint")
    group.addoption("--board", default=None, help="board id (boards/<ID>/board.toml) for hardware-in-the-loop tests")
    group.addoption("--port", default=None, help="pyserial URL or device of the real board named with --board")


def kernel_params(name: str):
    """pytest params for every importable implementation of kernel ``name``."""
    return [pytest.param(mod, id="compiled" if not mod.__name__.endswith("_py") else "python")
            for mod in pyx.available(name)]


@pytest.fixture
def board_option(request):
    """(board_id, port) of a real board, or skip the test when none is named."""
    board, port = request.config.getoption("--board"), request.config.getoption("--port")
    if not board or not port:
        pytest.skip("no real board named (use --board BOARD_ID --port URL)")
    return board, port
