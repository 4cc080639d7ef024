"""Message times on the wire: flamesdk writes ``str(datetime.now())`` (local, naive)."""

from __future__ import annotations

from datetime import datetime

__all__ = ["format_wire_time", "parse_wire_time"]


def format_wire_time(moment: datetime) -> str:
    """Render a time the way flamesdk does (``str(datetime.now())``: local, naive)."""
    return str(moment.astimezone().replace(tzinfo=None))


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
