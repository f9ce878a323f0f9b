"""splitpoint.pyx: the Cython kernels of the hot path, each with a pure-Python twin.

A kernel ``name`` is ``name.pyx`` (compiled to ``splitpoint.pyx.name``), its
C-level API ``name.pxd``, stubs ``name.pyi`` and a twin ``name_py.py`` with the
same Python API. ``select(name)`` returns the compiled module when it was
built, the twin otherwise; ``SPLITPOINT_NO_EXTENSIONS=1`` forces the twins.
Consumers always go through ``select``, never import a kernel module directly.
"""
from __future__ import annotations

import importlib
import os

#: every kernel this package ships
KERNELS = ("ring", "ringload", "epochmap", "blockcopy", "frame", "nbdwire", "memlun")

_selected: dict[str, object] = {}


def extensions_disabled() -> bool:
    return os.environ.get("SPLITPOINT_NO_EXTENSIONS", "") == "1"


def compiled(name: str):
    """The compiled module of kernel ``name``, or None when it was not built."""
    try:
        return importlib.import_module(f"splitpoint.pyx.{name}")
    except ImportError:
        return None


def twin(name: str):
    """The pure-Python twin of kernel ``name``."""
    return importlib.import_module(f"splitpoint.pyx.{name}_py")


def select(name: str):
    """The implementation of kernel ``name`` the rest of splitpoint uses."""
    mod = _selected.get(name)
    if mod is None:
        mod = None if extensions_disabled() else compiled(name)
        if mod is None:
            mod = twin(name)
        _selected[name] = mod
    return mod


def available(name: str) -> list:
    """Every importable implementation of ``name``: compiled first (unless disabled), then the twin."""
    mods = []
    if not extensions_disabled():
        mod = compiled(name)
        if mod is not None:
            mods.append(mod)
    mods.append(twin(name))
    return mods


def implementations() -> dict[str, str]:
    """kernel name -> "compiled" or "python" (or "missing" while a kernel is not written yet)."""
    out = {}
    for name in KERNELS:
        try:
            mod = select(name)
        except ImportError:
            out[name] = "missing"
            continue
        out[name] = "python" if mod.__name__.endswith("_py") else "compiled"
    return out
