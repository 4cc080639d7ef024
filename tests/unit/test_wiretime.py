"""Wire timestamps are written as flamesdk writes them (local, naive), also across daylight
saving time changes, although the local UTC offset is looked up once per minute."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta, timezone

import pytest

from flame_async._protocol import format_wire_time

_CHECK = textwrap.dedent(
    """
    import os, sys, time
    from datetime import UTC, datetime, timedelta
    os.environ["TZ"] = sys.argv[1]
    time.tzset()
    from flame_async._protocol import format_wire_time
    start = datetime(2026, 3, 29, 0, 58, tzinfo=UTC)  # Europe: clocks go forward at 01:00 UTC
    moments = [start + timedelta(seconds=s) for s in range(0, 240, 7)]
    for turn in (datetime(2026, 11, 1, 6, tzinfo=UTC), datetime(2026, 10, 25, 1, tzinfo=UTC)):
        moments += [turn - timedelta(seconds=1), turn, turn + timedelta(seconds=1)]
    for moment in moments:
        expected = str(moment.astimezone().replace(tzinfo=None))
        assert format_wire_time(moment) == expected, (moment, format_wire_time(moment), expected)
    print("ok")
    """
)


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 6, 1, 12, 0, 0, 123456, tzinfo=UTC),
        datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC),  # str() leaves out zero microseconds
        datetime(2026, 6, 1, 17, 30, 0, 5, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    ],
)
def test_wire_times_are_local_naive_like_flamesdk_writes_them(moment: datetime) -> None:
    assert format_wire_time(moment) == str(moment.astimezone().replace(tzinfo=None))


def test_wire_times_follow_daylight_saving_changes_in_every_zone() -> None:
    for zone in ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Adelaide"):
        done = subprocess.run(
            [sys.executable, "-c", _CHECK, zone], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, (zone, done.stderr)
        assert done.stdout.strip() == "ok"
