"""The live view of `flame-async run`: its table at 80 columns, its last frame, its counts.

The tmux tests drive the real command in a real (if detached) terminal of 80 x 30 and read the
screen with ``tmux capture-pane``, the way a person would look at it. tmux comes from Debian's
packages: when it is missing it is installed with apt-get (as root only), else those tests skip
and say why.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from rich.console import Console

from flame_async._live import LiveView, _Frame, _Row, _Traffic, _traffic_line
from flame_async.local import (
    DeliveryCounts,
    DeliveryEvent,
    DeliveryOutcome,
    LocalPlatform,
    LogRecord,
    NodeDeliveryCounts,
)
from flame_async.runner import NodeOutcome, run_script

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "fhir_mean_histogram.py"
DATA = ROOT / "examples" / "data"
STUCK = Path(__file__).parent / "analyses" / "stuck.py"
BLOCKER = Path(__file__).parent / "analyses" / "blocker.py"

STATUS_WORDS = ("executing", "executed", "failed", "stopped", "starting")
BOX_START = ("┏", "┃", "┡", "│", "└")
LOG = "run status: executing (and a log line far too long for any terminal of 80 columns)"


def _render(frame: _Frame, width: int) -> list[str]:
    console = Console(file=io.StringIO(), width=width, color_system=None, legacy_windows=False)
    with console.capture() as capture:
        console.print(frame)
    return capture.get().rstrip("\n").split("\n")


def _rows(lines: list[str]) -> list[list[str]]:
    """The cells of the table's body rows."""
    return [[c.strip() for c in line.split("│")[1:-1]] for line in lines if line.startswith("│")]


def _frame(nodes: int = 5) -> _Frame:
    rows = [
        _Row(
            f"node-{i + 1}",
            "aggregator" if i == 0 else "default",
            STATUS_WORDS[i % len(STATUS_WORDS)],
            [0, 50, 100, 7, 99][i % 5],
            "1234/1234",
            LOG,
        )
        for i in range(nodes)
    ]
    return _Frame(rows, _Traffic(delivered=12, to_ended=3, to_running=1))


# --- layout ------------------------------------------------------------------------------------


def test_at_80_columns_ids_roles_status_words_and_percent_are_whole() -> None:
    lines = _render(_frame(), 80)

    assert max(len(line) for line in lines) <= 80
    rows = _rows(lines)
    assert [r[0] for r in rows] == [f"node-{i}" for i in range(1, 6)]
    assert [r[1] for r in rows] == ["aggregator"] + ["default"] * 4
    assert [r[2] for r in rows] == list(STATUS_WORDS)
    assert [r[3].split()[-1] for r in rows] == ["0%", "50%", "100%", "7%", "99%"]
    assert rows[2][3].startswith("━"), "a progress bar is still drawn"
    assert {r[4] for r in rows} == {"1234/1234"}
    # the log column takes what is left and is the one cut
    assert all(r[5].endswith("…") and LOG.startswith(r[5][:-1]) for r in rows)
    assert len(rows[0][5]) >= 8


def _widths(lines: list[str]) -> list[int]:
    """The columns' widths, from the table's top border."""
    top = next(line for line in lines if line.startswith("┏"))
    return [len(cell) for cell in top[1:-1].split("┳")]


def test_the_progress_bar_shrinks_before_the_log_column() -> None:
    wide, roomy, narrow = (_render(_frame(), width) for width in (160, 110, 80))

    # node, role, status and out/in keep their widths; progress and log share the rest
    assert _widths(wide)[:3] == _widths(roomy)[:3] == _widths(narrow)[:3]
    assert _widths(wide)[4] == _widths(roomy)[4] == _widths(narrow)[4]
    progress = [_widths(lines)[3] for lines in (wide, roomy, narrow)]
    log = [_widths(lines)[5] for lines in (wide, roomy, narrow)]
    assert progress[0] > progress[1] > progress[2]  # the bar gave way first ...
    assert log[1] == 40 + 2  # ... while the log column kept 40 characters (and padding)
    assert log[0] > log[1] > log[2]  # ... and only then did the log column give way
    assert _rows(wide)[0][5] == LOG  # with room enough, nothing is cut


def test_a_very_narrow_terminal_drops_the_log_column_first() -> None:
    lines = _render(_frame(), 60)

    assert max(len(line) for line in lines) <= 60
    assert "last log line" not in "".join(lines)
    rows = _rows(lines)
    assert [r[2] for r in rows] == list(STATUS_WORDS)
    assert [r[3].split()[-1] for r in rows] == ["0%", "50%", "100%", "7%", "99%"]


def test_drops_to_ended_nodes_are_counted_apart_and_only_lost_ones_are_red() -> None:
    line = _traffic_line(_Traffic(delivered=2329, to_ended=431, to_running=2), rich=True)

    assert line.plain == "messages: 2,329 delivered, 431 to nodes that had ended, 2 dropped"
    styles = {line.plain[s.start : s.end]: str(s.style) for s in line.spans}
    assert "red" not in styles["431 to nodes that had ended"]
    assert "red" in styles["2 dropped"]
    quiet = _traffic_line(_Traffic(delivered=8, to_ended=431, to_running=0), rich=False)
    assert quiet == "messages: 8 delivered, 431 to nodes that had ended"
    assert "dropped" not in quiet


# --- what an update costs: what changed, not what the run recorded ------------------------------

T0 = 1000.0  # monotonic seconds of the fake run's start
WALL0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


class _Tty(io.StringIO):
    """A terminal for rich: every redraw is written (off a terminal only the last is)."""

    def isatty(self) -> bool:
        return True


@dataclass
class _FakePlatform:
    """Stands in for a LocalPlatform of many nodes and counts what the view reads."""

    nodes: int
    events: list[DeliveryEvent] = field(default_factory=list)
    records: dict[str, list[LogRecord]] = field(default_factory=dict)  # the PO's, per node
    changes: list[str] = field(default_factory=list)  # the node of each PO change
    taken: int = 0  # delivery events handed out
    reads: Counter[str] = field(default_factory=Counter)

    def node_ids(self) -> list[str]:
        return [f"node-{i}" for i in range(1, self.nodes + 1)]

    def deliver(self, sender: str, recipient: str, at: float, outcome: DeliveryOutcome) -> None:
        dropped = outcome == "dropped"
        self.events.append(
            DeliveryEvent(
                sender=sender,
                recipient=recipient,
                subscription_id=None if dropped else "s",
                category="c",
                message_id=f"m{len(self.events)}",
                size=10,
                outcome=outcome,
                attempts=0 if dropped else 1,
                status=None if dropped else 200,
                reason="HTTP 503" if dropped else "",
                sent_monotonic=at,
                monotonic=at,
                time=WALL0 + timedelta(seconds=at - T0),
            )
        )

    def log(self, node: str, text: str, at: float, status: str = "executing") -> None:
        record = LogRecord(node, text, "info", status, 50, at, WALL0 + timedelta(seconds=at - T0))
        self.records.setdefault(node, []).append(record)
        self.changes.append(node)

    # what LiveView reads
    @property
    def deliveries(self) -> list[DeliveryEvent]:
        raise AssertionError("the view copied every delivery event")

    def deliveries_since(self, cursor: int, /) -> tuple[list[DeliveryEvent], int]:
        self.reads["deliveries_since"] += 1
        new = self.events[cursor:]
        self.taken += len(new)
        return new, len(self.events)

    def delivery_counts(self) -> DeliveryCounts:
        self.reads["delivery_counts"] += 1
        delivered = sum(1 for e in self.events if e.outcome == "delivered")  # the fake's cost
        return DeliveryCounts(len(self.events), delivered, len(self.events) - delivered, 0)

    def node_delivery_counts(self, node_id: str, /) -> NodeDeliveryCounts:
        self.reads["node_delivery_counts"] += 1
        return NodeDeliveryCounts(sent_delivered=1, received=2)

    def nodes_changed_since(self, cursor: int, /) -> tuple[list[str], int]:
        self.reads["nodes_changed_since"] += 1
        return list(dict.fromkeys(self.changes[cursor:])), len(self.changes)

    def logs_since(self, node_id: str, cursor: int, /) -> tuple[list[LogRecord], int]:
        self.reads["logs_since"] += 1
        records = self.records.get(node_id, [])
        return records[cursor:], len(records)

    def logs(self, node_id: str, /) -> list[LogRecord]:
        raise AssertionError("the view copied a node's every log record")

    def status(self, node_id: str, /) -> str | None:
        records = self.records.get(node_id)
        return records[-1].status if records else None

    def progress(self, node_id: str, /) -> int:
        return 50 if self.records.get(node_id) else 0

    def blocked(self, node_id: str, /) -> None:
        return None


def _running(platform: _FakePlatform) -> list[NodeOutcome]:
    return [
        NodeOutcome(node, "aggregator" if i == 0 else "default", status="running", started=WALL0)
        for i, node in enumerate(platform.node_ids())
    ]


async def test_an_update_of_a_thousand_nodes_takes_only_what_is_new() -> None:
    platform = _FakePlatform(1000)
    nodes = platform.node_ids()
    for i in range(100_000):
        platform.deliver(nodes[i % 1000], nodes[(i + 1) % 1000], T0 + i / 1e4, "delivered")
    for node in nodes:
        platform.log(node, "started", T0)
    outcomes = _running(platform)
    stream = _Tty()
    view = LiveView(stream, rich=True, width=80, refresh_per_second=math.inf)
    reads: list[Counter[str]] = []
    try:
        await view(platform, outcomes)
        first = len(stream.getvalue())
        for tick in range(20):  # a few new copies and one node's log line per update
            for i in range(5):
                platform.deliver("node-1", nodes[i + 1], T0 + 20 + tick, "delivered")
            platform.log(nodes[tick], f"step {tick}", T0 + 20 + tick)
            platform.reads.clear()
            await view(platform, outcomes)
            reads.append(platform.reads.copy())
        drawn = len(stream.getvalue())
        await view(platform, outcomes)  # nothing new: nothing redrawn
        again = len(stream.getvalue())
    finally:
        view.close()

    assert first > 0 and drawn > first  # it drew the table, then each change
    assert again == drawn
    assert platform.taken == len(platform.events)  # each event was handed out once
    for counts in reads:  # the new events and log lines only; rows of the few nodes shown
        assert counts["deliveries_since"] == 1
        assert counts["logs_since"] == 1
        assert counts["node_delivery_counts"] <= 10


async def test_above_fifty_nodes_the_table_counts_statuses_and_shows_who_is_behind() -> None:
    platform = _FakePlatform(1000)
    nodes = platform.node_ids()
    for node in nodes:
        platform.log(node, "started", T0)
    platform.log("node-7", "boom", T0 + 1, status="failed")
    outcomes = _running(platform)
    for outcome in outcomes[500:]:
        outcome.status = "executed"
    outcomes[6].status = "failed"
    view = LiveView(io.StringIO(), rich=True, width=80, refresh_per_second=math.inf)
    try:
        await view(platform, outcomes)
        lines = _render(view._frame(platform, outcomes, closing=False), 80)
    finally:
        view.close()

    assert max(len(line) for line in lines) <= 80
    assert lines[0] == "messages: 0 delivered"
    assert lines[1] == "nodes: 1,000 (1 failed, 499 executing, 500 executed)"
    rows = _rows(lines)
    assert len(rows) == 10
    assert rows[0][:3] == ["node-7", "default", "failed"]  # the failed node first
    assert all(r[2] == "executing" for r in rows[1:])


async def test_a_copy_judged_lost_is_recounted_once_its_recipient_turns_out_to_have_ended() -> None:
    """The runner notes a node's end a little after it happened: a copy dropped in between
    looked lost, until the node's end time shows it came after."""
    platform = _FakePlatform(60)
    platform.log("node-2", "working", T0)
    outcomes = _running(platform)
    view = LiveView(io.StringIO(), rich=True, width=80, refresh_per_second=math.inf)
    try:
        await view(platform, outcomes)
        platform.deliver("node-1", "node-2", T0 + 5, "dropped")  # node-2 had ended at T0 + 4
        platform.deliver("node-1", "node-3", T0 + 5, "dropped")  # node-3 still runs: lost
        await view(platform, outcomes)
        before = _traffic(view, platform, outcomes)
        outcomes[1].status, outcomes[1].seconds = "executed", 4.0
        await view(platform, outcomes)
        after = _traffic(view, platform, outcomes)
    finally:
        view.close()

    assert before == "messages: 0 delivered, 2 dropped"
    assert after == "messages: 0 delivered, 1 to nodes that had ended, 1 dropped"


def _traffic(view: LiveView, platform: _FakePlatform, outcomes: Sequence[NodeOutcome]) -> str:
    return _render(view._frame(platform, outcomes, closing=False), 80)[0]


# --- whole runs --------------------------------------------------------------------------------


def _table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(BOX_START)]


@pytest.mark.slow
async def test_the_last_frame_is_drawn_once_with_every_node_done(tmp_path: Path) -> None:
    stream = io.StringIO()
    view = LiveView(stream, rich=True, width=80)
    try:
        result = await run_script(
            EXAMPLE, nodes=3, data=DATA, out_dir=tmp_path / "out", timeout=60, observer=view
        )
    finally:
        view.close()
    view.close()  # a second close changes nothing

    text = stream.getvalue()
    assert result.ok
    assert text.count("┏") == 1, text  # one table: no title of its own, no second frame
    assert "analysis " not in text
    rows = _rows(_table_lines(text))
    assert [(r[0], r[2], r[3].split()[-1]) for r in rows] == [
        (f"node-{i}", "executed", "100%") for i in (1, 2, 3)
    ], text  # analyzers that reported 50 % are done all the same
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "messages: " in text and "dropped" not in text


async def _interrupted(tmp_path: Path, view: LiveView) -> list[NodeOutcome]:
    """Run the stuck analysis and cancel it (as Ctrl-C does) once every node executes."""
    seen: list[NodeOutcome] = []

    async def observer(platform: LocalPlatform, outcomes: list[NodeOutcome]) -> None:
        await view(platform, outcomes)
        seen[:] = outcomes
        if all(platform.status(o.node_id) == "executing" for o in outcomes):
            scope.cancel()

    with anyio.fail_after(60), anyio.CancelScope() as scope:
        try:
            await run_script(STUCK, nodes=3, out_dir=tmp_path / "out", observer=observer)
        finally:
            view.close()
    assert scope.cancelled_caught
    return seen


@pytest.mark.slow
async def test_an_interrupted_run_ends_on_a_frame_with_the_final_statuses(
    tmp_path: Path,
) -> None:
    stream = io.StringIO()

    outcomes = await _interrupted(tmp_path, LiveView(stream, rich=True, width=80))

    text = stream.getvalue()
    assert [o.status for o in outcomes] == ["stopped"] * 3
    assert text.count("┏") == 1, text
    record = json.loads((tmp_path / "out" / "run.json").read_text())  # kept, though cut short
    assert record["stop_reason"] == "interrupted"
    assert [n["status"] for n in record["nodes"]] == ["stopped"] * 3
    assert [r[2] for r in _rows(_table_lines(text))] == ["stopped"] * 3, text
    assert "executing │" not in text


@pytest.mark.slow
async def test_an_interrupted_run_in_plain_lines_ends_with_the_final_statuses(
    tmp_path: Path,
) -> None:
    stream = io.StringIO()

    await _interrupted(tmp_path, LiveView(stream, rich=False))

    text = stream.getvalue()
    for node in ("node-1", "node-2", "node-3"):
        assert f"[{node}] ----- stopped" in text, text
    assert text.rstrip().splitlines()[-1].startswith("messages: ")


@pytest.mark.slow
async def test_a_node_whose_loop_is_blocked_shows_so_with_its_line(tmp_path: Path) -> None:
    """A node in its own process reports a blocked loop from its watchdog thread: while the
    block lasts, the table shows the node as blocked and where, and the plain lines say it
    once."""
    plain = io.StringIO()
    view = LiveView(plain, rich=False, refresh_per_second=math.inf)  # looks at every update
    tables = LiveView(io.StringIO(), rich=True, width=80, refresh_per_second=math.inf)
    table: list[str] = []

    async def observer(platform: LocalPlatform, outcomes: list[NodeOutcome]) -> None:
        await view(platform, outcomes)
        report = platform.blocked("node-1")
        if report is not None and report.ongoing:
            tables._take(platform, outcomes)
            table[:] = _render(tables._frame(platform, outcomes, closing=False), 80)
            scope.cancel()

    with anyio.fail_after(60), anyio.CancelScope() as scope:
        try:
            await run_script(
                BLOCKER, nodes=2, mode="processes", out_dir=tmp_path / "out", observer=observer
            )
        finally:
            view.close()
            tables.close()
    assert scope.cancelled_caught

    rows = {r[0]: r for r in _rows(table)}
    assert rows["node-1"][2] == "blocked", table
    assert rows["node-1"][-1].startswith("blocker.py:14, "), table  # where, how long
    assert rows["node-2"][2] != "blocked", table
    text = plain.getvalue()
    [line] = [ln for ln in text.splitlines() if "event loop blocked" in ln]
    assert line.startswith("[node-1] warn  event loop blocked for "), text
    assert "blocker.py:14 (in main)" in line, text


# --- in a real terminal: tmux ------------------------------------------------------------------

TMUX_WIDTH, TMUX_HEIGHT = 80, 30
DEADLINE = 60.0
DONE = "__flame_async_done__"


def _install_tmux() -> str | None:
    """Install tmux with apt-get; the reason it cannot be done, or None when it worked."""
    apt = shutil.which("apt-get")
    if apt is None:
        return "no apt-get on this machine to install tmux with"
    if os.geteuid() != 0:
        return "installing tmux needs root; run the tests as root or install tmux"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "--no-install-recommends", "tmux"]
    reason = ""
    for steps in ([install], [[apt, "update"], install]):  # the package lists may be missing
        try:
            for step in steps:
                subprocess.run(
                    step, check=True, capture_output=True, text=True, env=env, timeout=600
                )
        except subprocess.CalledProcessError as exc:
            reason = f"{' '.join(exc.cmd)} failed ({exc.returncode}): {exc.stderr[-300:]}"
            continue
        except subprocess.TimeoutExpired as exc:
            return f"{' '.join(map(str, exc.cmd))} took longer than 600 s"
        if shutil.which("tmux"):
            return None
        reason = "apt-get installed tmux but it is not on PATH"
    return reason


@pytest.fixture(scope="session")
def tmux() -> str:
    """The tmux executable, installed first when it is missing."""
    if shutil.which("tmux") is None:
        reason = _install_tmux()
        if reason is not None:
            print(f"skipping the tmux tests: {reason}")
            pytest.skip(f"tmux unavailable: {reason}")
    found = shutil.which("tmux")
    assert found is not None
    return found


class Terminal:
    """A detached tmux session of 80 x 30 on a server of its own, running one command."""

    def __init__(self, tmux: str, socket: Path) -> None:
        self.base = [tmux, "-S", str(socket), "-f", os.devnull]

    def tmux(self, *args: str) -> str:
        done = subprocess.run(
            [*self.base, *args], check=True, capture_output=True, text=True, timeout=30
        )
        return done.stdout

    def start(self, command: list[str]) -> None:
        line = " ".join(_quote(a) for a in command)
        # The shell stays after the command, so that its last screen can be read. Its trap
        # keeps it alive through Ctrl-C (a handler, unlike ignoring the signal, is not
        # inherited: the command still gets SIGINT as it would in a terminal).
        script = (
            f"trap : INT; cd {_quote(str(ROOT))} && env -u COLUMNS -u LINES PYTHONUNBUFFERED=1 "
            f"{line}; echo {DONE} $?; exec sleep 3600"
        )
        size = ["-x", str(TMUX_WIDTH), "-y", str(TMUX_HEIGHT)]
        # with more than one argument tmux runs the command itself, not through a shell
        self.tmux("new-session", "-d", "-s", "live", *size, "sh", "-c", script)

    def screen(self) -> str:
        """The visible screen, wrapped lines joined (a line longer than 80 stays one line)."""
        return self.tmux("capture-pane", "-p", "-J", "-t", "live")

    def wait_for(
        self, predicate: Callable[[str], bool], what: str, seen: list[str] | None = None
    ) -> str:
        """Poll the screen until ``predicate`` holds (tmux offers no event for it)."""
        deadline = time.monotonic() + DEADLINE
        while True:
            screen = self.screen()
            if seen is not None:
                seen.append(screen)
            if predicate(screen):
                return screen
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {DEADLINE:g} s; the screen:\n{screen}")
            time.sleep(0.02)

    def close(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, timeout=30, check=False)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


@pytest.fixture
def terminal(tmux: str, tmp_path: Path) -> Iterator[Terminal]:
    # a short socket path: AF_UNIX paths have a length limit that tmp_path can exceed
    socket = Path("/tmp") / f"flame-live-{os.getpid()}-{time.monotonic_ns()}.sock"
    term = Terminal(tmux, socket)
    try:
        yield term
    finally:
        term.close()
        socket.unlink(missing_ok=True)


def _check_view_lines(screen: str) -> list[list[str]]:
    """The table must fit: every line of it at most 80 wide and whole, every status word whole.

    Returns the cells of its body rows.
    """
    table = _table_lines(screen)
    for line in [*table, *(x for x in screen.splitlines() if x.startswith("messages: "))]:
        assert len(line) <= TMUX_WIDTH, f"wider than {TMUX_WIDTH}: {line!r}\n{screen}"
    for line in table:
        assert line.rstrip()[-1] in "┓┃┩│┘", f"a cut table line: {line!r}\n{screen}"
    rows = _rows(table)
    for cells in rows:
        assert re.fullmatch(r"node-\d+", cells[0]), screen
        assert cells[1] in ("aggregator", "default"), screen
        assert cells[2] in STATUS_WORDS, screen
        assert re.search(r"\b\d{1,3}%$", cells[3]), screen
    return rows


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "flame_async.cli", *args]


@pytest.mark.slow
def test_the_table_fits_80_columns_in_a_terminal(terminal: Terminal, tmp_path: Path) -> None:
    out = tmp_path / "out"
    terminal.start(
        _cli("run", str(EXAMPLE), "--nodes", "3", "--data", str(DATA), "--out", str(out))
    )
    screens: list[str] = []

    final = terminal.wait_for(lambda s: DONE in s, "end of the run", screens)

    for screen in screens:  # every frame seen while the run went on, and the last
        _check_view_lines(screen)
    rows = _check_view_lines(final)
    assert [(r[0], r[2], r[3].split()[-1]) for r in rows] == [
        ("node-1", "executed", "100%"),
        ("node-2", "executed", "100%"),
        ("node-3", "executed", "100%"),
    ], final
    assert sum(line.startswith("┏") for line in final.splitlines()) == 1, final
    assert sum(line.startswith("┃ node") for line in final.splitlines()) == 1, final
    assert final.count("running ") == 1 and "analysis " not in final, final
    assert f"{DONE} 0" in final
    assert (out / "run.json").is_file()


@pytest.mark.slow
def test_ctrl_c_leaves_the_final_statuses_on_screen(terminal: Terminal, tmp_path: Path) -> None:
    out = tmp_path / "out"
    terminal.start(_cli("run", str(STUCK), "--nodes", "3", "--out", str(out), "--timeout", "120"))

    def all_executing(screen: str) -> bool:
        rows = _rows(_table_lines(screen))
        return len(rows) == 3 and all(r[2] == "executing" for r in rows)

    running = terminal.wait_for(all_executing, "table with every node executing")
    _check_view_lines(running)
    terminal.tmux("send-keys", "-t", "live", "C-c")
    final = terminal.wait_for(lambda s: DONE in s, "end of the interrupted run")

    rows = _check_view_lines(final)
    assert [r[2] for r in rows] == ["stopped"] * 3, final
    assert sum(line.startswith("┏") for line in final.splitlines()) == 1, final
    assert f"{DONE} 130" in final
    assert "interrupted; what the run saw:" in final
    assert json.loads((out / "run.json").read_text())["stop_reason"] == "interrupted"
