"""Durations on the command line: ``90s``, ``15m``, ``2h``, ``7d``, ``1h30m`` (a bare number is seconds)."""

from __future__ import annotations

import datetime
import re

__all__ = ["format_age", "parse_duration"]

_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> datetime.timedelta:
    """``text`` as a duration; `ValueError` naming the accepted forms otherwise."""
    value = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        return datetime.timedelta(seconds=float(value))
    if value and _PART.sub("", value) == "":
        return datetime.timedelta(seconds=sum(float(n) * _SECONDS[u] for n, u in _PART.findall(value)))
    raise ValueError(f"{text!r} is not a duration: use e.g. 90s, 15m, 2h, 7d or 1h30m")


def format_age(delta: datetime.timedelta) -> str:
    """A short age: ``42s``, ``5m``, ``3h``, ``2d``."""
    seconds = max(int(delta.total_seconds()), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
