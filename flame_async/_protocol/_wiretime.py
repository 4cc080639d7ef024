"""Message times on the wire: flamesdk writes ``str(datetime.now())`` (local, naive)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

__all__ = ["format_wire_time", "parse_wire_time"]

_SPAN = 60.0
"""Seconds (of UTC, from a whole minute) for which one look-up of the local UTC offset is
reused: offsets change only at whole minutes (daylight saving time), and every message is
stamped."""

_offset: tuple[float, float, timedelta] = (0.0, -1.0, timedelta(0))
"""The local UTC offset, and the span of POSIX timestamps it was looked up for."""


def _local_offset(moment: datetime) -> timedelta:
    """The local UTC offset at ``moment`` (aware), looked up once per minute of UTC."""
    global _offset  # noqa: PLW0603 - a one-entry cache
    stamp = moment.timestamp()
    start, end, offset = _offset
    if not start <= stamp < end:
        offset = moment.astimezone().utcoffset() or timedelta(0)
        start = stamp - stamp % _SPAN
        _offset = (start, start + _SPAN, offset)
    return offset


def format_wire_time(moment: datetime) -> str:
    """Render an aware time the way flamesdk does (``str(datetime.now())``: local, naive)."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    # the local time in UTC's clothes: its ISO form less "+00:00" is str() of the naive one
    # (replace(tzinfo=None) costs more than the rest together; every message is stamped)
    return (moment + _local_offset(moment)).isoformat(" ")[:-6]


def parse_wire_time(text: str | None, default: datetime) -> datetime:
    """Parse a flamesdk timestamp (naive local time) into an aware datetime.

    Anything that is not a representable time (garbage, or a year-1 date that overflows when
    converted) gives ``default``: the time is informational, the message still counts.
    """
    if not text:
        return default
    try:
        return datetime.fromisoformat(text).astimezone()
    except (ValueError, OverflowError, OSError):
        return default
