"""splitpoint.hal: storage behind one contract, chosen by URL scheme.

Owns the BlockDevice contract (``contract``), one backend module per scheme
and stackable filters. It never knows about mirrors, pools or triggers.
"""
from __future__ import annotations

import importlib
from urllib.parse import unquote

from splitpoint.hal.contract import (  # noqa: F401  (re-exported contract)
    BadURLError,
    BlockDevice,
    DeviceClosedError,
    DeviceGoneError,
    HalError,
    MisalignedError,
    OutOfRangeError,
    ReadOnlyError,
    ZeroLengthError,
    check_io,
)

#: scheme -> "module:Class"; a backend module is imported only when its scheme is used
BACKENDS = {
    "ram": "splitpoint.hal.ram:RamDevice",
    "file": "splitpoint.hal.file:FileDevice",
    "serial": "splitpoint.hal.serial_dev:SerialDevice",
    "board": "splitpoint.hal.board:BoardDevice",
    "link": "splitpoint.hal.link:LinkDevice",
    "link+tls": "splitpoint.hal.link:LinkDevice",
    "nbd": "splitpoint.hal.nbd:NbdDevice",
    "nbds": "splitpoint.hal.nbd:NbdDevice",
    "nbd+unix": "splitpoint.hal.nbd:NbdDevice",
    "nbds+unix": "splitpoint.hal.nbd:NbdDevice",
}


def register_backend(scheme: str, target: str) -> None:
    """Make ``scheme://`` open with ``target`` ("module:Class" with a from_url classmethod)."""
    BACKENDS[scheme] = target


def _take_faults(url: str) -> tuple[str, str | None]:
    """``url`` without its ``faults=SPEC`` option, and SPEC (None when absent)."""
    base, sep, query = url.partition("?")
    if not sep:
        return url, None
    kept, spec = [], None
    for part in query.split("&"):
        key, _eq, value = part.partition("=")
        if key != "faults":
            kept.append(part)
        elif spec is not None:
            raise BadURLError(f"option 'faults' given twice in {url!r}; give one comma-separated fault spec")
        else:
            spec = unquote(value)
    return (base + "?" + "&".join(kept) if kept else base), spec


def open_device(url: str) -> BlockDevice:
    """Open the device a URL names, e.g. ``ram://?size=256M&block=4096``.

    Any scheme takes ``faults=SPEC`` (hal.filters): the device comes wrapped in those block filters."""
    url, faults = _take_faults(url)
    if faults is not None:
        from splitpoint.hal.filters import wrap_device

        return wrap_device(open_device(url), faults)
    scheme, sep, _rest = url.partition("://")
    if not sep:
        raise BadURLError(f"{url!r} is not a device URL; expected SCHEME://..., schemes: {', '.join(sorted(BACKENDS))}")
    target = BACKENDS.get(scheme.lower())
    if target is None:
        raise BadURLError(f"unknown device scheme {scheme!r} in {url!r}; schemes: {', '.join(sorted(BACKENDS))}")
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls.from_url(url)
