"""Device URL parsing shared by every backend: sizes and option checking.

A backend declares its grammar (a one-line string) and its options; an
unknown option is rejected with that grammar in the message.
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


def split_url(url: str, grammar: str, allowed: set[str]) -> tuple[str, str, dict[str, str]]:
    """Return (netloc, path, options) of ``url``; reject options not in ``allowed``."""
    parts = urlsplit(url)
    options: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in allowed:
            valid = ", ".join(sorted(allowed)) or "none"
            raise BadURLError(f"unknown option {key!r} in {url!r}; grammar: {grammar} (valid options: {valid})")
        if key in options:
            raise BadURLError(f"option {key!r} given twice in {url!r}; grammar: {grammar}")
        options[key] = value
    return unquote(parts.netloc), unquote(parts.path), options


def check_geometry(size: int, block_size: int, grammar: str) -> None:
    if block_size <= 0 or block_size & (block_size - 1):
        raise BadURLError(f"block size {block_size} is not a power of two; grammar: {grammar}")
    if size <= 0 or size % block_size:
        raise BadURLError(f"size {size} is not a positive multiple of the block size {block_size}; grammar: {grammar}")
