"""splitpoint.boards.firmware: the bridge-board firmware in portable C, and its host build.

Owns the C core (``core/``: the wire protocol's device side, the request ring,
the primary and its pool of backup regions, the control channel), the host
port built with cffi (``host/``) and ``CBoard``, that build as an in-process
board. It never reimplements the board in Python: every decision is the C
core's, so tests of ``CBoard`` are tests of the firmware.
"""


def available() -> bool:
    """True when the cffi build of the core is importable (``make build`` made it)."""
    try:
        from splitpoint.boards.firmware import _cboard  # noqa: F401
    except ImportError:
        return False
    return True
