"""Device URL parsing shared by every backend: sizes, option checking, a serial link's options.

A backend declares its grammar (a one-line string, also written as a comment
at the top of its module) and its options; this module parses a URL once into
those options, and an unknown option is rejected with that grammar in the
message. It never opens anything.
"""
from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlsplit

from splitpoint.hal.contract import BadURLError

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgtp]?)(i?b)?\s*$", re.I)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_size(text: str | int) -> int:
    """Parse ``4096``, ``64K``, ``256M``, ``1GiB``... into bytes (binary units)."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise BadURLError(f"bad size {text!r}: use a number with an optional K, M, G or T suffix")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def parse_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise BadURLError(f"bad boolean {text!r}: use 1/0, true/false, yes/no or on/off")


def _options(url: str, query: str, grammar: str, allowed: set[str]) -> dict[str, str]:
    """The options of ``query``; an unknown or repeated one is rejected with the grammar."""
    options: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in allowed:
            valid = ", ".join(sorted(allowed)) or "none"
            raise BadURLError(f"unknown option {key!r} in {url!r}; grammar: {grammar} (valid options: {valid})")
        if key in options:
            raise BadURLError(f"option {key!r} given twice in {url!r}; grammar: {grammar}")
        options[key] = value
    return options


def split_url(url: str, grammar: str, allowed: set[str]) -> tuple[str, str, dict[str, str]]:
    """Return (netloc, path, options) of ``url``; reject options not in ``allowed``."""
    parts = urlsplit(url)
    return unquote(parts.netloc), unquote(parts.path), _options(url, parts.query, grammar, allowed)


def split_port_url(url: str, scheme: str, grammar: str, allowed: set[str]) -> tuple[str, dict[str, str]]:
    """(port, options) of ``scheme://PORT?opts``, where PORT may itself be a URL (``socket://host:port``)."""
    prefix = f"{scheme}://"
    if not url.lower().startswith(prefix):
        raise BadURLError(f"{url!r} is not a {prefix} URL; grammar: {grammar}")
    port, _, query = url[len(prefix):].partition("?")
    return unquote(port), _options(url, query, grammar, allowed)


#: the options of a serial link (serial://, board://): the session's timers and window
LINK_OPTIONS = {"baud", "rate", "window", "rto", "retries", "reconnect"}


def _whole(opts: dict, key: str, grammar: str, low: int = 1, high: int | None = None) -> int:
    text = opts[key]
    try:
        value = int(parse_size(text))
    except (BadURLError, ValueError):
        raise BadURLError(f"{key}={text!r} is not a whole number; grammar: {grammar}") from None
    if value < low or (high is not None and value > high):
        raise BadURLError(f"{key}={value} is out of range {low}..{high or 'inf'}; grammar: {grammar}")
    return value


def _seconds(opts: dict, key: str, grammar: str) -> float:
    from splitpoint.hal.filters import FaultSpecError, parse_duration  # the filters own the DURATION syntax

    try:
        return parse_duration(key, opts[key])
    except FaultSpecError as exc:
        raise BadURLError(f"{exc}; grammar: {grammar}") from None


def link_options(opts: dict[str, str], grammar: str, max_window: int) -> dict:
    """The keyword arguments of a serial link's options (those of LINK_OPTIONS present in ``opts``)."""
    out: dict = {}
    if "baud" in opts:
        out["baud"] = _whole(opts, "baud", grammar, 50, 50_000_000)
    if "rate" in opts:
        out["rate"] = _whole(opts, "rate", grammar)
    if "window" in opts:
        out["window"] = _whole(opts, "window", grammar, 1, max_window)
    if "retries" in opts:
        out["retries"] = _whole(opts, "retries", grammar, 0, 1000)
    for key in ("rto", "reconnect"):
        if key in opts:
            out[key] = _seconds(opts, key, grammar)
    return out


def check_geometry(size: int, block_size: int, grammar: str) -> None:
    if block_size <= 0 or block_size & (block_size - 1):
        raise BadURLError(f"block size {block_size} is not a power of two; grammar: {grammar}")
    if size <= 0 or size % block_size:
        raise BadURLError(f"size {size} is not a positive multiple of the block size {block_size}; grammar: {grammar}")
