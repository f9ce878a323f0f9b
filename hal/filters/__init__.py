"""splitpoint.hal.filters: stackable fault injection, one behaviour per module (nbdkit's pattern).

A fault spec is a comma-separated list, applied in the order written:

    drop=RATE  corrupt=RATE  duplicate=RATE  reorder=RATE  garbage=RATE  error=RATE
    delay=DURATION  stall=AFTER[:DURATION]  disconnect=EVERY:DURATION  kill=AFTER
    seed=N  dir=both|rx|tx

RATE is a probability (0.01 or 1%), DURATION seconds with an optional unit
(5ms, 0.2s). ``frame_chain`` builds the link filters (the emulator's link;
``dir`` picks which direction: rx = host to board); ``wrap_device`` stacks
the block filters over any HAL BlockDevice; ``open_device`` stacks them from
a device URL's ``faults=SPEC`` option (``file:///x.img?size=1M&faults=kill=3``).
Fault injection lives only here, never as flags inside a backend.
"""
from __future__ import annotations

import importlib
import random
import re

from splitpoint.hal.contract import BadURLError, BlockDevice
from splitpoint.hal.filters.base import DeviceFilter, FrameChain, FrameFilter  # noqa: F401

#: filter name -> (module, argument kinds)
FILTERS = {
    "drop": ("drop", ("rate",)),
    "corrupt": ("corrupt", ("rate",)),
    "duplicate": ("duplicate", ("rate",)),
    "reorder": ("reorder", ("rate",)),
    "garbage": ("garbage", ("rate",)),
    "error": ("error", ("rate",)),
    "delay": ("delay", ("duration",)),
    "stall": ("stall", ("count", "duration?")),
    "disconnect": ("disconnect", ("count", "duration")),
    "kill": ("kill", ("count",)),
}
OPTIONS = ("seed", "dir")
GRAMMAR = ("NAME=VALUE[,NAME=VALUE...] with NAME one of " + ", ".join(FILTERS) + ", seed, dir; "
           "e.g. drop=1%,corrupt=0.01,delay=5ms,stall=200:2s,disconnect=500:0.2s")
_DURATION = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|us)?$")


class FaultSpecError(BadURLError):
    """A fault spec names an unknown filter or gives it a bad value."""


def _rate(name: str, text: str) -> float:
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise FaultSpecError(f"{name}={text!r}: a rate is a probability like 0.01 or 1%; grammar: {GRAMMAR}") from None
    if not 0 <= value <= 1:
        raise FaultSpecError(f"{name}={text!r}: a rate must be between 0 and 1 (0% and 100%)")
    return value


def parse_duration(name: str, text: str) -> float:
    """Seconds in DURATION (5ms, 0.2s, 1); FaultSpecError names ``name`` when it is not one."""
    m = _DURATION.match(text.strip())
    if not m:
        raise FaultSpecError(f"{name}: {text!r} is not a duration like 5ms or 0.2s; grammar: {GRAMMAR}")
    return float(m.group(1)) * {"ms": 1e-3, "us": 1e-6, "s": 1.0, None: 1.0}[m.group(2)]


def _count(name: str, text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise FaultSpecError(f"{name}: {text!r} is not a positive whole number; grammar: {GRAMMAR}")
    return int(text)


def parse_spec(spec: str | None) -> tuple[list[tuple[str, tuple]], dict]:
    """[(filter name, args)], {"seed": int|None, "dir": str} of a fault spec."""
    filters: list[tuple[str, tuple]] = []
    options = {"seed": None, "dir": "both"}
    for item in (p.strip() for p in (spec or "").split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip().lower()
        if not sep:
            raise FaultSpecError(f"{item!r} has no value; grammar: {GRAMMAR}")
        if name == "seed":
            options["seed"] = _count("seed", value) if value != "0" else 0
            continue
        if name == "dir":
            if value not in ("both", "rx", "tx"):
                raise FaultSpecError(f"dir={value!r}: use both, rx (host to board) or tx (board to host)")
            options["dir"] = value
            continue
        if name not in FILTERS:
            raise FaultSpecError(f"unknown fault filter {name!r}; valid filters: {', '.join(FILTERS)}, "
                                 f"options: {', '.join(OPTIONS)}")
        kinds = FILTERS[name][1]
        parts = value.split(":")
        required = [k for k in kinds if not k.endswith("?")]
        if not len(required) <= len(parts) <= len(kinds):
            raise FaultSpecError(f"{name}={value!r} takes {':'.join(kinds).replace('?', ' (optional)')}; "
                                 f"grammar: {GRAMMAR}")
        args = []
        for kind, text in zip(kinds, parts):
            kind = kind.rstrip("?")
            args.append(_rate(name, text) if kind == "rate" else
                        parse_duration(name, text) if kind == "duration" else _count(name, text))
        filters.append((name, tuple(args)))
    return filters, options


def _module(name: str):
    return importlib.import_module(f"splitpoint.hal.filters.{FILTERS[name][0]}")


def frame_chain(spec: str | None, direction: str, seed: int | None = None, link=None) -> FrameChain:
    """The link filters of ``spec`` for one direction ("rx": host to board, "tx": board to host)."""
    filters, options = parse_spec(spec)
    base = options["seed"] if options["seed"] is not None else seed
    chain = []
    if options["dir"] in ("both", direction):
        for index, (name, args) in enumerate(filters):
            cls = _module(name).FRAME
            if cls is None:
                raise FaultSpecError(f"{name!r} acts on devices, not on a link; link filters: "
                                     f"{', '.join(n for n in FILTERS if _module(n).FRAME)}")
            rng = random.Random(f"{base}/{direction}/{index}/{name}" if base is not None else None)
            chain.append(cls(rng, *args))
    out = FrameChain(chain)
    if link is not None:
        out.attach(link)
    return out


def wrap_device(device: BlockDevice, spec: str | None, seed: int | None = None) -> BlockDevice:
    """``device`` under the block filters of ``spec`` (the first named is outermost)."""
    filters, options = parse_spec(spec)
    base = options["seed"] if options["seed"] is not None else seed
    for index, (name, args) in reversed(list(enumerate(filters))):
        cls = _module(name).DEVICE
        if cls is None:
            raise FaultSpecError(f"{name!r} acts on a link, not on a device; device filters: "
                                 f"{', '.join(n for n in FILTERS if _module(n).DEVICE)}")
        rng = random.Random(f"{base}/device/{index}/{name}" if base is not None else None)
        device = cls(device, rng, *args)
    return device
