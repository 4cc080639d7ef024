"""Render a run summary (``run.json``) as one self-contained HTML page.

:func:`render_report` turns the mapping described in ``docs/run-json.md`` into a page that needs
no network at all: the CSS and a few lines of JavaScript are inline, the charts are SVG generated
here, and the run itself is embedded as JSON in ``<script type="application/json" id="run-data">``
for anyone who wants the raw numbers (the page offers it as a download). :func:`write_report`
writes the page to a file.

The page shows a header with the overall outcome, the per-node summary table (tracebacks of failed
nodes in ``<details>``), a swim-lane timeline of every broker delivery between nodes, each node's
progress over time and the last log lines per node.

The node(s) whose own failure ended the run are marked "root cause" (header, summary row and
lane); nodes that failed only because a peer had failed are marked "in consequence". Copies
dropped because their recipient had already ended (acks and ``analysis_finished`` copies to nodes
that had left) are counted apart from lost ones and drawn grey: only drops to nodes that were
still running are shown as problems (red). A node that ended ``executed`` is shown at 100 %
whatever it last reported.

Rendering is tolerant on purpose: the report is written at the end of every run, including runs
that failed or timed out half-way, so a missing or malformed field renders as "—" instead of
raising. Stable hooks for tests and tooling: ``#summary``, ``#timeline``, ``#progress``, ``#logs``,
``.node-row[data-node]``, ``.lane[data-node]``, ``.msg`` (one per drawn message; dropped ones also
``.drop``, and ``.ended`` when their recipient had ended), ``.root-cause`` and ``.consequence``
(rows and lanes of failed nodes).
"""

from __future__ import annotations

import html
import math
import os
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import orjson

__all__ = ["MAX_DRAWN_MESSAGES", "render_report", "write_report"]

MAX_DRAWN_MESSAGES: Final = 5000
"""Messages drawn on the timeline at most; larger runs show an even sample (the data has all)."""

_LOG_LINES: Final = 50  # last log lines shown per node
_RESULT_CHARS: Final = 160  # a result repr is cut here in the table (full text in its tooltip)
_LABEL_CHARS: Final = 18  # lane and legend labels are cut here (full id in the tooltip)
_LEGEND_OPEN: Final = 16  # a longer progress legend is folded into <details>
_PALETTE_SIZE: Final = 8  # node colours --c0..--c7 in the CSS; they repeat beyond that
_DASHES: Final = ("", "6 3", "2 2", "8 3 2 3")  # line styles: colour and dash tell nodes apart
_SPREAD: Final = 3.0  # progress lines are offset this far apart (user units), so equal ones show
_SPREAD_MAX: Final = 12.0  # ... within a band at most this high

# Chart geometry in SVG user units; both charts share the x axis so their times line up.
_LEFT: Final = 150.0
_PLOT_W: Final = 1000.0
_RIGHT: Final = 24.0
_WIDTH: Final = _LEFT + _PLOT_W + _RIGHT
_AXIS_H: Final = 40.0
_PROGRESS_H: Final = 200.0

_DASH: Final = "—"
_ENDED: Final = frozenset({"executed", "failed", "stopped"})


# --------------------------------------------------------------------------------------------
# Tolerant views of the run mapping


def _text(value: object, default: str = "") -> str:
    if value is None:
        return default
    return value if isinstance(value, str) else str(value)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _count(value: object) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def _items(value: object) -> list[Any]:
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else []


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _flag(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def _instant(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def _offset(origin: datetime | None, value: object) -> float | None:
    """Seconds from ``origin`` to the timestamp ``value``, if both are usable."""
    moment = _instant(value)
    if origin is None or moment is None or (origin.tzinfo is None) != (moment.tzinfo is None):
        return None
    return (moment - origin).total_seconds()


@dataclass(frozen=True, slots=True)
class _Node:
    node_id: str
    role: str
    status: str
    seconds: float | None
    progress: float | None
    messages_sent: int | None
    messages_received: int | None
    bytes_sent: int | None
    bytes_received: int | None
    result: str | None
    error_type: str
    error_message: str
    traceback: str
    waiting_for: list[str]
    start: float | None  # seconds since the run started
    end: float | None
    root_cause: bool | None  # None: not recorded (older run.json); worked out in _Run.parse
    consequential: bool | None

    @property
    def shown_progress(self) -> float | None:
        """The progress to show: 100 for a node that ended ``executed``."""
        return 100.0 if self.status == "executed" else self.progress

    @classmethod
    def parse(cls, raw: Mapping[str, Any], origin: datetime | None) -> _Node:
        error = _mapping(raw.get("error"))
        result = raw.get("result")
        return cls(
            node_id=_text(raw.get("node_id"), "?"),
            role=_text(raw.get("role")),
            status=_text(raw.get("status"), "unknown"),
            seconds=_number(raw.get("seconds")),
            progress=_number(raw.get("progress")),
            messages_sent=_count(raw.get("messages_sent")),
            messages_received=_count(raw.get("messages_received")),
            bytes_sent=_count(raw.get("bytes_sent")),
            bytes_received=_count(raw.get("bytes_received")),
            result=None if result is None else _text(result),
            error_type=_text(error.get("type")) if error else "",
            error_message=_text(error.get("message")) if error else "",
            traceback=_text(error.get("traceback")) if error else "",
            waiting_for=[_text(w) for w in _items(raw.get("waiting_for"))],
            start=_offset(origin, raw.get("started")),
            end=_offset(origin, raw.get("ended")),
            root_cause=_flag(raw.get("root_cause")),
            consequential=_flag(raw.get("consequential")),
        )


@dataclass(frozen=True, slots=True)
class _Message:
    t: float
    sender: str
    recipient: str
    category: str
    message_id: str
    size: int | None
    outcome: str
    attempts: int | None
    ack: bool
    recipient_ended: bool | None  # a dropped copy whose recipient had ended (None: not recorded)

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> _Message | None:
        t = _number(raw.get("t"))
        if t is None:
            return None
        return cls(
            t=max(t, 0.0),
            sender=_text(raw.get("sender"), "?"),
            recipient=_text(raw.get("recipient"), "?"),
            category=_text(raw.get("category"), "message"),
            message_id=_text(raw.get("message_id")),
            size=_count(raw.get("size")),
            outcome=_text(raw.get("outcome"), "delivered"),
            attempts=_count(raw.get("attempts")),
            ack=raw.get("ack") is True,
            recipient_ended=_flag(raw.get("recipient_ended")),
        )

    @property
    def dropped(self) -> bool:
        return self.outcome != "delivered"

    @property
    def lost(self) -> bool:
        """Dropped while its recipient was still running: a problem."""
        return self.dropped and not self.recipient_ended


@dataclass(frozen=True, slots=True)
class _Point:
    t: float
    percent: float
    status: str


@dataclass(frozen=True, slots=True)
class _LogLine:
    t: float | None
    level: str
    text: str


@dataclass(slots=True)
class _Run:
    raw: Mapping[str, Any]
    nodes: list[_Node]
    messages: list[_Message]
    progress: dict[str, list[_Point]]
    logs: dict[str, list[_LogLine]]
    lanes: list[str]  # node ids in display order: run nodes first, then any other id seen
    index: dict[str, int]  # node id -> lane
    domain: float  # the x axis runs from 0 to this many seconds

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> _Run:
        origin = _instant(raw.get("started"))
        nodes = [_Node.parse(n, origin) for n in _items(raw.get("nodes")) if isinstance(n, Mapping)]
        messages = [
            m
            for m in (
                _Message.parse(r) for r in _items(raw.get("messages")) if isinstance(r, Mapping)
            )
            if m is not None
        ]
        progress: dict[str, list[_Point]] = {}
        for node_id, series in _mapping(raw.get("progress")).items():
            points = []
            for entry in _items(series):
                row = _items(entry)
                t, percent = (_number(row[0]), _number(row[1])) if len(row) >= 2 else (None, None)
                if t is not None and percent is not None:
                    status = _text(row[2]) if len(row) > 2 else ""
                    points.append(_Point(max(t, 0.0), min(max(percent, 0.0), 100.0), status))
            points.sort(key=lambda p: p.t)
            progress[_text(node_id)] = points
        logs: dict[str, list[_LogLine]] = {}
        for node_id, lines in _mapping(raw.get("logs")).items():
            parsed = []
            for entry in _items(lines):
                row = _items(entry)
                if len(row) >= 3:
                    parsed.append(_LogLine(_number(row[0]), _text(row[1]), _text(row[2])))
                elif isinstance(entry, str):
                    parsed.append(_LogLine(None, "", entry))
            logs[_text(node_id)] = parsed

        nodes = _mark_failures(nodes)
        messages = _mark_ended_recipients(messages, nodes)
        lanes = list(dict.fromkeys(n.node_id for n in nodes))
        known = set(lanes)
        for node_id in _chain_ids(messages, progress, logs):
            if node_id not in known:
                known.add(node_id)
                lanes.append(node_id)

        ends = [_number(raw.get("seconds")) or 0.0]
        ends += [m.t for m in messages]
        ends += [p.t for series in progress.values() for p in series]
        ends += [n.end for n in nodes if n.end is not None]
        domain = max(ends)
        index = {node_id: i for i, node_id in enumerate(lanes)}
        return cls(
            raw, nodes, messages, progress, logs, lanes, index, domain if domain > 0 else 1.0
        )

    def colour(self, node_id: str) -> int:
        """The palette slot of a node (its lane index, wrapped)."""
        return self.index.get(node_id, 0) % _PALETTE_SIZE


def _mark_failures(nodes: list[_Node]) -> list[_Node]:
    """Nodes with ``root_cause``/``consequential`` set (as ``RunResult.root_causes`` when the
    run does not record them: failures other than ``PeerFailed``, else every failure)."""
    if all(n.root_cause is not None for n in nodes):
        return [replace(n, consequential=bool(n.consequential)) for n in nodes]
    failed = [n for n in nodes if n.status == "failed"]
    own = {n.node_id for n in failed if n.error_type != "PeerFailed"} or {n.node_id for n in failed}
    return [
        replace(
            n,
            root_cause=n.node_id in own,
            consequential=n.status == "failed" and n.node_id not in own,
        )
        for n in nodes
    ]


def _mark_ended_recipients(messages: list[_Message], nodes: list[_Node]) -> list[_Message]:
    """Messages with ``recipient_ended`` set where the run does not record it: a dropped copy
    sent at or after its recipient's end."""
    ends = {n.node_id: n.end for n in nodes if n.end is not None and n.status in _ENDED}
    marked = []
    for message in messages:
        if message.recipient_ended is not None:
            marked.append(message)
            continue
        end = ends.get(message.recipient)
        ended = message.dropped and end is not None and message.t >= end
        marked.append(replace(message, recipient_ended=ended))
    return marked


def _chain_ids(
    messages: Iterable[_Message], progress: Mapping[str, object], logs: Mapping[str, object]
) -> Iterator[str]:
    for message in messages:
        yield message.sender
        yield message.recipient
    yield from progress
    yield from logs


# --------------------------------------------------------------------------------------------
# Formatting


def _e(value: object) -> str:
    return html.escape(_text(value), quote=True)


def _seconds(value: float | None) -> str:
    if value is None:
        return _DASH
    if value < 0.01:
        return f"{value * 1000:.1f} ms"
    if value < 60:
        return f"{value:.2f} s"
    minutes, seconds = divmod(value, 60)
    if minutes < 60:
        return f"{int(minutes)} min {seconds:04.1f} s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)} h {int(minutes):02d} min"


def _bytes(value: int | None) -> str:
    if value is None:
        return _DASH
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _int(value: int | None) -> str:
    return _DASH if value is None else f"{value:,}"


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _f(value: float) -> str:
    """A coordinate: one decimal, no trailing zero, to keep large SVGs small."""
    return f"{value:.1f}".removesuffix(".0")


def _tick_step(domain: float, target: int = 10) -> float:
    raw = domain / target
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next(f * magnitude for f in (1.0, 2.0, 2.5, 5.0, 10.0) if raw <= f * magnitude)


def _ticks(domain: float) -> list[tuple[float, str]]:
    step = _tick_step(domain)
    count = int(domain / step + 1e-9)
    return [(i * step, f"{i * step:.6f}".rstrip("0").rstrip(".")) for i in range(count + 1)]


def _x(t: float, domain: float) -> float:
    return _LEFT + min(t, domain) / domain * _PLOT_W


def _json_default(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, Iterable) and not isinstance(value, str | bytes):
        return list(value)
    return str(value)


def _embed(run: Mapping[str, Any]) -> str:
    """The run as JSON that is safe inside a ``<script>`` element.

    ``<``, ``>`` and ``&`` only occur inside JSON strings, where ``\\u003c`` and friends mean the
    same thing to ``JSON.parse``; without them no ``</script>`` or ``<!--`` can end the element.
    """
    data = orjson.dumps(dict(run), default=_json_default, option=orjson.OPT_NON_STR_KEYS)
    return (
        data.replace(b"<", b"\\u003c").replace(b">", b"\\u003e").replace(b"&", b"\\u0026").decode()
    )


# --------------------------------------------------------------------------------------------
# Sections


def _outcome(raw: Mapping[str, Any]) -> tuple[str, str]:
    if raw.get("timed_out") is True:
        return "timed-out", "timed out"
    if raw.get("ok") is True:
        return "ok", "ok"
    if raw.get("ok") is False:
        return "failed", "failed"
    return "unknown", "unknown"


def _moment(value: datetime | None) -> str:
    if value is None:
        return _DASH
    text = value.strftime("%Y-%m-%d %H:%M:%S")
    offset = value.utcoffset()
    if offset is None:
        return text
    return f"{text} UTC" if not offset else f"{text} {value.strftime('%z')}"


def _header(run: _Run) -> str:
    raw = run.raw
    css, label = _outcome(raw)
    reason = _text(raw.get("stop_reason"))
    delivered = sum(1 for m in run.messages if not m.dropped)
    lost = sum(1 for m in run.messages if m.lost)
    to_ended = len(run.messages) - delivered - lost
    acks = sum(1 for m in run.messages if m.ack)
    traffic = sum(m.size or 0 for m in run.messages)
    started = _instant(raw.get("started"))
    facts = [
        ("Analysis", f"<code>{_e(raw.get('analysis_id') or _DASH)}</code>"),
        ("Project", f"<code>{_e(raw.get('project_id') or _DASH)}</code>"),
        ("Mode", _e(raw.get("mode") or _DASH)),
        ("Started", _e(_moment(started))),
        ("Duration", _e(_seconds(_number(raw.get("seconds"))))),
        ("Nodes", _e(len(run.nodes))),
        (
            "Messages",
            f'<span id="messages-delivered">{delivered:,} delivered ({acks:,} acks)</span>'
            + (
                f', <span class="muted" id="messages-to-ended" title="copies dropped because '
                "their recipient had already ended (acks and analysis_finished copies to nodes "
                f'that had left): no failure">{to_ended:,} to nodes that had ended</span>'
                if to_ended
                else ""
            )
            + (
                f', <span class="bad" id="messages-dropped" title="copies dropped while their '
                f'recipient was still running: lost messages">{lost:,} dropped</span>'
                if lost
                else ""
            )
            + f" · {_e(_bytes(traffic))}",
        ),
    ]
    causes = [n for n in run.nodes if n.root_cause]
    if causes:
        shown = causes[:3]
        more = f" and {len(causes) - len(shown)} more" if len(causes) > len(shown) else ""
        facts.append(
            (
                "Root cause",
                '<span id="root-cause">'
                + "; ".join(
                    f'<code class="bad">{_e(n.node_id)}</code>'
                    + (f" {_e(_short(_error_line(n), 90))}" if _error_line(n) else "")
                    for n in shown
                )
                + f"{_e(more)}</span>",
            )
        )
    dl = "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in facts)
    stop = f'<span class="stop-reason">{_e(reason)}</span>' if reason else ""
    return (
        '<header id="header">'
        '<div class="title-row">'
        f'<h1><span class="muted">flame-async run</span> {_e(raw.get("script") or "analysis")}</h1>'
        f'<div class="outcome"><span class="pill big {css}" id="outcome">{label}</span>{stop}</div>'
        "</div>"
        f'<dl class="facts">{dl}<div class="data"><dt>Data</dt><dd>'
        '<a id="download-json" href="#" download="run.json">run.json</a></dd></div></dl>'
        "</header>"
    )


def _error_line(node: _Node) -> str:
    text = f"{node.error_type}: {node.error_message}" if node.error_message else node.error_type
    return text.splitlines()[0] if text else ""


def _cause_badge(node: _Node) -> str:
    if node.root_cause:
        return (
            ' <span class="pill root-cause" title="failed on its own, not because a peer '
            'failed">root cause</span>'
        )
    if node.consequential:
        return (
            ' <span class="pill consequence" title="failed only because a peer it waited on '
            'had failed">in consequence</span>'
        )
    return ""


def _summary(run: _Run) -> str:
    head = (
        "<tr><th scope='col'>Node</th><th scope='col'>Role</th><th scope='col'>Status</th>"
        "<th scope='col' class='num'>Time</th><th scope='col'>Progress</th>"
        "<th scope='col' class='num'>Msgs sent</th><th scope='col' class='num'>Msgs recv</th>"
        "<th scope='col' class='num'>Bytes sent</th><th scope='col' class='num'>Bytes recv</th>"
        "<th scope='col'>Result / error</th></tr>"
    )
    rows = []
    for node in run.nodes:
        rows.append(_node_row(run, node))
        if node.traceback:
            rows.append(
                f'<tr class="trace-row" data-node="{_e(node.node_id)}"><td colspan="10">'
                "<details>"
                f"<summary>Traceback of <code>{_e(node.node_id)}</code>: "
                f"{_e(node.error_type or 'error')}</summary>"
                f'<pre class="traceback">{_e(node.traceback.rstrip())}</pre></details></td></tr>'
            )
    if not run.nodes:
        rows.append('<tr><td colspan="10" class="empty">This run has no nodes.</td></tr>')
    finals = [_text(p) for p in _items(run.raw.get("final_results"))]
    final = (
        '<p class="finals">Final results: '
        + ", ".join(f"<code>{_e(p)}</code>" for p in finals)
        + "</p>"
        if finals
        else ""
    )
    return (
        '<section id="summary" aria-labelledby="summary-h"><h2 id="summary-h">Nodes</h2>'
        f'<div class="table-wrap"><table><thead>{head}</thead><tbody>{"".join(rows)}</tbody>'
        f"</table></div>{final}</section>"
    )


def _node_row(run: _Run, node: _Node) -> str:
    percent = node.shown_progress
    bar = (
        f'<span class="bar" aria-hidden="true"><span style="width:{percent:.0f}%"></span></span>'
        f"{percent:.0f}%"
        if percent is not None
        else _DASH
    )
    detail = []
    if node.error_type or node.error_message:
        detail.append(
            f'<span class="err"><b>{_e(node.error_type or "error")}</b>'
            f"{': ' + _e(node.error_message) if node.error_message else ''}</span>"
        )
    if node.result is not None:
        detail.append(
            f'<code class="result" title="{_e(node.result)}">'
            f"{_e(_short(node.result, _RESULT_CHARS))}</code>"
        )
    if node.waiting_for:
        detail.append(
            '<span class="muted">waiting for: '
            + ", ".join(f"<code>{_e(w)}</code>" for w in node.waiting_for)
            + "</span>"
        )
    status = _e(node.status)
    marks = " root-cause" if node.root_cause else " consequence" if node.consequential else ""
    return (
        f'<tr class="node-row status-{status}{marks}" data-node="{_e(node.node_id)}">'
        f'<th scope="row"><span class="swatch c{run.colour(node.node_id)}"></span>'
        f"<code>{_e(node.node_id)}</code></th>"
        f"<td>{_e(node.role or _DASH)}</td>"
        f'<td class="status-cell"><span class="pill {status}">{status}</span>'
        f"{_cause_badge(node)}</td>"
        f'<td class="num">{_e(_seconds(node.seconds))}</td>'
        f'<td class="progress-cell">{bar}</td>'
        f'<td class="num">{_int(node.messages_sent)}</td>'
        f'<td class="num">{_int(node.messages_received)}</td>'
        f'<td class="num">{_bytes(node.bytes_sent)}</td>'
        f'<td class="num">{_bytes(node.bytes_received)}</td>'
        f'<td class="detail">{"<br>".join(detail) or _DASH}</td></tr>'
    )


def _sample(messages: list[_Message], limit: int) -> list[_Message]:
    """At most ``limit`` messages, in time order, chosen for what a reader needs most.

    Every lost message (dropped while its recipient ran) is kept, then copies dropped to nodes
    that had ended, data messages, then acks; the first kind that does not fit whole is sampled
    at random with a fixed seed. A random sample, unlike every n-th message,
    cannot alias with periodic traffic (message, ack, message, ack, ...).
    """
    if len(messages) <= limit:
        return messages
    chosen: list[int] = []
    layers = (
        [i for i, m in enumerate(messages) if m.lost],
        [i for i, m in enumerate(messages) if m.dropped and not m.lost],
        [i for i, m in enumerate(messages) if not m.dropped and not m.ack],
        [i for i, m in enumerate(messages) if not m.dropped and m.ack],
    )
    for layer in layers:
        budget = limit - len(chosen)
        if len(layer) <= budget:
            chosen += layer
        else:
            # Not for security: a reproducible spread of marks.
            chosen += random.Random(len(messages)).sample(layer, budget)  # noqa: S311
            break
    return [messages[i] for i in sorted(chosen)]


def _x_axis(domain: float, top: float, bottom: float, *, labels_on_top: bool = False) -> str:
    """Vertical grid lines from ``top`` to ``bottom`` and tick labels below (and above) them."""
    parts = ['<g class="axis" aria-hidden="true">']
    for t, label in _ticks(domain):
        x = _f(_x(t, domain))
        parts.append(
            f'<line class="grid" x1="{x}" x2="{x}" y1="{_f(top)}" y2="{_f(bottom)}"/>'
            f'<text x="{x}" y="{_f(bottom + 16)}" text-anchor="middle">{label}</text>'
        )
        if labels_on_top:
            parts.append(f'<text x="{x}" y="{_f(top - 7)}" text-anchor="middle">{label}</text>')
    parts.append(
        f'<text class="axis-title" x="{_f(_LEFT + _PLOT_W)}" y="{_f(bottom + 34)}" '
        'text-anchor="end">seconds since start</text></g>'
    )
    return "".join(parts)


def _markers() -> str:
    arrows = "".join(
        f'<marker id="ah{i}" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7" '
        'markerHeight="7" markerUnits="userSpaceOnUse" orient="auto">'
        f'<path d="M0 0L8 4L0 8z" style="fill:var(--c{i})"/></marker>'
        for i in range(_PALETTE_SIZE)
    )
    return (
        f"<defs>{arrows}"
        '<marker id="ah-ack" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="6" markerHeight="6" '
        'markerUnits="userSpaceOnUse" orient="auto"><path d="M0 0L8 4L0 8z" '
        'style="fill:var(--ack)"/></marker>'
        '<marker id="ah-drop" viewBox="0 0 8 8" refX="4" refY="4" markerWidth="9" '
        'markerHeight="9" markerUnits="userSpaceOnUse"><path d="M1 1L7 7M7 1L1 7" '
        'style="stroke:var(--fail);stroke-width:2"/></marker>'
        '<marker id="ah-ended" viewBox="0 0 8 8" refX="4" refY="4" markerWidth="7" '
        'markerHeight="7" markerUnits="userSpaceOnUse"><path d="M1 1L7 7M7 1L1 7" '
        'style="stroke:var(--ack);stroke-width:1.5"/></marker></defs>'
    )


def _lane_height(count: int) -> float:
    return 52.0 if count <= 6 else max(14.0, min(40.0, 360.0 / count))


def _timeline(run: _Run) -> str:
    messages = run.messages
    drawn = _sample(messages, MAX_DRAWN_MESSAGES)
    note = ""
    if len(drawn) < len(messages):
        note = (
            f'<p class="note" id="timeline-note">Showing {len(drawn):,} of {len(messages):,} '
            "messages: every lost one, then copies to nodes that had ended and data messages "
            "before acks, sampled at random "
            "where they do not all fit. The embedded run data holds all of them.</p>"
        )
    controls = (
        '<div class="controls">'
        '<label><input type="checkbox" id="show-acks" checked> show acks</label>'
        '<label>highlight node <select id="focus-node"><option value="">none</option>'
        + "".join(f'<option value="{i}">{_e(n)}</option>' for i, n in enumerate(run.lanes))
        + "</select></label>"
        '<span class="key"><i class="k-msg"></i>message (sender colour)</span>'
        '<span class="key"><i class="k-ack"></i>ack</span>'
        '<span class="key"><i class="k-drop"></i>dropped (recipient running)</span>'
        '<span class="key"><i class="k-ended"></i>dropped (recipient had ended)</span>'
        "</div>"
    )
    if not run.lanes:
        return (
            '<section id="timeline" aria-labelledby="timeline-h">'
            '<h2 id="timeline-h">Messages between nodes</h2>'
            '<p class="empty">No nodes and no messages in this run.</p></section>'
        )
    if not messages:
        note = '<p class="empty" id="timeline-note">No messages were exchanged in this run.</p>'

    lane_h = _lane_height(len(run.lanes))
    tall = len(run.lanes) > 12  # the chart scrolls: repeat the time labels above the lanes
    top = 24.0 if tall else 8.0
    bottom = top + lane_h * len(run.lanes)
    height = bottom + _AXIS_H
    index = run.index
    nodes = {n.node_id: n for n in run.nodes}
    domain = run.domain

    def centre(node_id: str) -> float:
        return top + lane_h * index[node_id] + lane_h / 2

    parts = [
        f'<svg id="timeline-svg" class="chart" role="img" aria-labelledby="timeline-title '
        f'timeline-desc" viewBox="0 0 {_f(_WIDTH)} {_f(height)}" width="{_f(_WIDTH)}" '
        f'height="{_f(height)}" xmlns="http://www.w3.org/2000/svg">'
        '<title id="timeline-title">Messages between nodes over time</title>'
        f'<desc id="timeline-desc">{len(messages):,} broker deliveries between '
        f"{len(run.lanes)} nodes over {_e(_seconds(domain))}; one lane per node, each message "
        "an arrow from the sender's lane to the recipient's lane at its delivery time.</desc>",
        _markers(),
    ]
    small = lane_h < 30
    for i, node_id in enumerate(run.lanes):
        y0 = top + lane_h * i
        cy = y0 + lane_h / 2
        node = nodes.get(node_id)
        colour = run.colour(node_id)
        label_y = cy if small or node is None or not node.role else cy - 6
        cause = _cause_words(node)
        marks = "".join(
            (" odd" if i % 2 else "",)
            + ((" root-cause",) if node and node.root_cause else ())
            + ((" consequence",) if node and node.consequential else ())
        )
        about = f"{node.role}, {node.status}" + (f", {cause}" if cause else "") if node else ""
        parts.append(
            f'<g class="lane{marks}" data-node="{_e(node_id)}" data-i="{i}">'
            f"<title>{_e(node_id)}{f' ({_e(about)})' if node else ''}</title>"
            f'<rect class="lane-bg" x="0" y="{_f(y0)}" width="{_f(_WIDTH)}" height="{_f(lane_h)}"/>'
            f'<line class="lane-axis" x1="{_f(_LEFT)}" x2="{_f(_LEFT + _PLOT_W)}" '
            f'y1="{_f(cy)}" y2="{_f(cy)}"/>'
            f'<circle class="dot c{colour}" cx="14" cy="{_f(cy)}" r="{4 if small else 5}"/>'
            f'<text class="lane-label{" small" if small else ""}" x="26" y="{_f(label_y)}" '
            f'dominant-baseline="central">{_e(_short(node_id, _LABEL_CHARS))}</text>'
        )
        if node is not None and node.role and not small:
            parts.append(
                f'<text class="lane-role" x="26" y="{_f(cy + 9)}" dominant-baseline="central">'
                f"{_e(_short(node.role, _LABEL_CHARS + 4))}"
                + (f'<tspan class="lane-cause"> · {_e(cause)}</tspan>' if cause else "")
                + "</text>"
            )
        if node is not None and node.start is not None and node.end is not None:
            x1, x2 = _x(max(node.start, 0.0), domain), _x(max(node.end, 0.0), domain)
            parts.append(
                f'<line class="active c{colour}" x1="{_f(x1)}" x2="{_f(x2)}" '
                f'y1="{_f(cy)}" y2="{_f(cy)}"/>'
            )
            if node.status in {"failed", "stopped"}:
                size = min(6.0, lane_h / 3)
                parts.append(
                    f'<path class="end-mark {_e(node.status)}" d="M{_f(x2 - size)} {_f(cy - size)}'
                    f"L{_f(x2 + size)} {_f(cy + size)}M{_f(x2 + size)} {_f(cy - size)}"
                    f'L{_f(x2 - size)} {_f(cy + size)}"><title>{_e(node_id)} {_e(node.status)} '
                    f"at {_e(_seconds(node.end))}</title></path>"
                    if node.status == "failed"
                    else f'<rect class="end-mark stopped" x="{_f(x2 - 1.5)}" '
                    f'y="{_f(cy - size)}" width="3" height="{_f(2 * size)}"><title>'
                    f"{_e(node_id)} stopped at {_e(_seconds(node.end))}</title></rect>"
                )
        parts.append("</g>")
    parts.append(_x_axis(domain, top, bottom, labels_on_top=tall))

    # Acks first and dropped messages last, so the interesting marks end up on top.
    parts.append('<g class="msgs">')
    parts.extend(_message_mark(m, run, index, centre, domain) for m in sorted(drawn, key=_layer))
    parts.append("</g></svg>")
    return (
        '<section id="timeline" aria-labelledby="timeline-h">'
        '<h2 id="timeline-h">Messages between nodes</h2>'
        f'{controls}{note}<div class="chart-wrap">{"".join(parts)}</div></section>'
    )


def _cause_words(node: _Node | None) -> str:
    if node is None:
        return ""
    return "root cause" if node.root_cause else "in consequence" if node.consequential else ""


def _layer(message: _Message) -> int:
    return 3 if message.lost else 2 if message.dropped else 0 if message.ack else 1


def _message_mark(
    message: _Message,
    run: _Run,
    index: Mapping[str, int],
    centre: Callable[[str], float],
    domain: float,
) -> str:
    x = _f(_x(message.t, domain))
    y1, y2 = centre(message.sender), centre(message.recipient)
    kind = "drop" if message.dropped else "ack" if message.ack else f"c{run.colour(message.sender)}"
    classes = (
        f"msg {kind}"
        + (" ack" if message.ack and message.dropped else "")
        + (" ended" if message.dropped and not message.lost else "")
    )
    attempts = (
        ""
        if message.attempts is None
        else f" · {message.attempts} attempt" + ("" if message.attempts == 1 else "s")
    )
    title = (
        f"{_e(message.category)}{' (ack)' if message.ack else ''}: "
        f"{_e(message.sender)} → {_e(message.recipient)}\n"
        f"t = {message.t:.3f} s · {_e(_bytes(message.size))}{attempts} · {_e(message.outcome)}"
        + (" (its recipient had ended)" if message.dropped and not message.lost else "")
        + (f"\n{_e(message.message_id)}" if message.message_id else "")
    )
    data = f'data-s="{index[message.sender]}" data-r="{index[message.recipient]}"'
    if y1 == y2:
        return (
            f'<circle class="{classes}" {data} cx="{x}" cy="{_f(y1)}" r="3">'
            f"<title>{title}</title></circle>"
        )
    return (
        f'<path class="{classes}" {data} d="M{x} {_f(y1)}V{_f(y2)}"><title>{title}</title></path>'
    )


def _progress(run: _Run) -> str:
    series = {node_id: points for node_id, points in run.progress.items() if points}
    if not series:
        return (
            '<section id="progress" aria-labelledby="progress-h">'
            '<h2 id="progress-h">Progress</h2>'
            '<p class="empty">No progress was reported in this run.</p></section>'
        )
    top = 12.0
    bottom = top + _PROGRESS_H
    height = bottom + _AXIS_H
    domain = run.domain

    def y(percent: float) -> float:
        return bottom - percent / 100 * _PROGRESS_H

    parts = [
        f'<svg id="progress-svg" class="chart" role="img" aria-labelledby="progress-title" '
        f'viewBox="0 0 {_f(_WIDTH)} {_f(height)}" width="{_f(_WIDTH)}" height="{_f(height)}" '
        'xmlns="http://www.w3.org/2000/svg">'
        '<title id="progress-title">Progress in percent per node over time</title>'
        '<g class="axis" aria-hidden="true">'
    ]
    parts.extend(
        f'<line class="grid" x1="{_f(_LEFT)}" x2="{_f(_LEFT + _PLOT_W)}" y1="{_f(y(percent))}" '
        f'y2="{_f(y(percent))}"/><text x="{_f(_LEFT - 8)}" y="{_f(y(percent))}" '
        f'text-anchor="end" dominant-baseline="central">{percent}%</text>'
        for percent in (0, 25, 50, 75, 100)
    )
    parts.append("</g>")
    parts.append(_x_axis(domain, top, bottom))
    nodes = {n.node_id: n for n in run.nodes}
    legend = []
    shown = [n for n in run.lanes if n in series]
    # Nodes often report the same progress at nearly the same times: each line is moved a few
    # units up or down (all of them within one narrow band) so that none hides another.
    step = 0.0 if len(shown) < 2 else min(_SPREAD, _SPREAD_MAX / (len(shown) - 1))
    for order, node_id in enumerate(shown):
        node = nodes.get(node_id)
        points = series[node_id]
        reported = points[-1]
        if node is not None and node.status == "executed" and reported.percent < 100:
            # it ended normally: done, whatever it reported last
            end = max(node.end if node.end is not None else reported.t, reported.t)
            points = [*points, _Point(end, 100.0, "executed")]
        dy = (order - (len(shown) - 1) / 2) * step
        lane = run.index.get(node_id, 0)
        colour = run.colour(node_id)
        dash = _DASHES[lane // _PALETTE_SIZE % len(_DASHES)]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        coords = []
        for i, point in enumerate(points):
            if i:  # progress holds until the next report: draw steps, not slopes
                coords.append(f"{_f(_x(point.t, domain))},{_f(y(points[i - 1].percent) + dy)}")
            coords.append(f"{_f(_x(point.t, domain))},{_f(y(point.percent) + dy)}")
        last = points[-1]
        status = node.status if node else last.status
        summary = f"{last.percent:.0f}% at {_seconds(last.t)}" + (f", {status}" if status else "")
        if last is not reported:
            summary += f" (last reported {reported.percent:.0f}%)"
        parts.append(
            f'<g class="series" data-node="{_e(node_id)}" data-dy="{_f(dy)}"><title>'
            f"{_e(node_id)}: {_e(summary)}</title>"
            f'<polyline class="line c{colour}"{dash_attr} points="{" ".join(coords)}"/>'
            f'<circle class="end c{colour}{" failed" if status == "failed" else ""}" '
            f'cx="{_f(_x(last.t, domain))}" cy="{_f(y(last.percent) + dy)}" r="3.5"/></g>'
        )
        legend.append(
            f'<li data-node="{_e(node_id)}"><svg class="key-line" width="24" height="10" '
            f'aria-hidden="true"><line class="line c{colour}"{dash_attr} x1="1" x2="23" y1="5" '
            f'y2="5"/></svg><code title="{_e(node_id)}">{_e(_short(node_id, _LABEL_CHARS))}'
            f'</code> <span class="muted">{_e(summary)}</span></li>'
        )
    parts.append("</svg>")
    items = f'<ul class="legend" aria-label="Nodes">{"".join(legend)}</ul>'
    if len(legend) > _LEGEND_OPEN:
        items = f"<details><summary>Legend: {len(legend)} nodes</summary>{items}</details>"
    band = step * (len(shown) - 1) / 2 / _PROGRESS_H * 100  # in percentage points
    note = (
        f'<p class="note" id="progress-note">Lines are moved apart by up to ±{band:.1f} '
        "percentage points so that nodes with equal progress stay visible; the legend and each "
        "line's tooltip give the exact values.</p>"
        if step
        else ""
    )
    return (
        '<section id="progress" aria-labelledby="progress-h"><h2 id="progress-h">Progress</h2>'
        f'<div class="chart-wrap">{"".join(parts)}</div>{items}{note}</section>'
    )


def _logs(run: _Run) -> str:
    blocks = []
    statuses = {n.node_id: n.status for n in run.nodes}
    for node_id in [n for n in run.lanes if run.logs.get(n)]:
        lines = run.logs[node_id]
        shown = lines[-_LOG_LINES:]
        problems = sum(1 for line in lines if line.level in {"error", "crit", "critical"})
        items = "".join(
            f'<li class="lv-{_e(line.level or "none")}"><span class="t">'
            f"{_DASH if line.t is None else f'{line.t:.3f}'}</span>"
            f'<span class="lv">{_e(line.level)}</span><span class="txt">{_e(line.text)}</span></li>'
            for line in shown
        )
        count = (
            f"{len(lines)} line{'' if len(lines) == 1 else 's'}"
            if len(lines) == len(shown)
            else f"last {len(shown)} of {len(lines):,} lines"
        )
        badge = f' <span class="pill failed">{problems} error</span>' if problems else ""
        open_ = " open" if statuses.get(node_id) == "failed" else ""
        blocks.append(
            f'<details class="log" data-node="{_e(node_id)}"{open_}><summary>'
            f'<span class="swatch c{run.colour(node_id)}"></span><code>{_e(node_id)}</code> '
            f'<span class="muted">{count}</span>{badge}</summary>'
            f'<ol class="log-lines">{items}</ol></details>'
        )
    body = "".join(blocks) or '<p class="empty">No log lines were recorded.</p>'
    return (
        '<section id="logs" aria-labelledby="logs-h"><h2 id="logs-h">Last log lines</h2>'
        f"{body}</section>"
    )


# --------------------------------------------------------------------------------------------
# Page

_CSS: Final = """
:root{--fg:#1f2328;--muted:#59636e;--border:#d1d9e0;--bg:#f6f8fa;--card:#fff;--ok:#1a7f37;
--fail:#cf222e;--warn:#9a6700;--ack:#8c959f;--grid:#e6eaef;--lane:#fafbfc;
--c0:#4e79a7;--c1:#f28e2b;--c2:#59a14f;--c3:#b07aa1;--c4:#499894;--c5:#9c755f;--c6:#d37295;
--c7:#6b6ecf}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1240px;margin:0 auto;padding:16px 20px 40px}
code,pre,.log-lines{font-family:ui-monospace,SFMono-Regular,"SF Mono",Menlo,Consolas,
"Liberation Mono",monospace;font-size:12.5px}
h1{font-size:20px;margin:0;font-weight:600}
h2{font-size:15px;margin:0 0 10px;font-weight:600}
.muted{color:var(--muted);font-weight:400}
.bad{color:var(--fail)}
header,section{background:var(--card);border:1px solid var(--border);border-radius:8px;
padding:14px 18px;margin:0 0 14px}
.title-row{display:flex;align-items:center;justify-content:space-between;gap:16px;
flex-wrap:wrap}
.outcome{display:flex;align-items:center;gap:10px}
.stop-reason{color:var(--muted)}
.facts{display:flex;flex-wrap:wrap;gap:6px 26px;margin:8px 0 0}
.facts div{min-width:0}
.facts dt{font-size:11px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted)}
.facts dd{margin:0}
a{color:#0969da;text-decoration:none}a:hover{text-decoration:underline}
.facts .data{margin-left:auto;text-align:right}
.pill{display:inline-block;padding:1px 9px;border-radius:999px;font-size:12px;font-weight:600;
background:#eff2f5;color:#424a53;white-space:nowrap}
.pill.big{font-size:14px;padding:3px 14px}
.pill.ok,.pill.executed{background:#dafbe1;color:#116329}
.pill.failed{background:#ffebe9;color:#a40e26}
.pill.timed-out{background:#fff8c5;color:#7d4e00}
.pill.stopped{background:#eff2f5;color:#424a53}
.pill.root-cause{background:var(--fail);color:#fff;margin-left:4px}
.pill.consequence{background:#fff1e5;color:#953800;margin-left:4px}
tr.root-cause>th,tr.root-cause>td{background:#fff5f5}
tr.root-cause>th{box-shadow:inset 5px 0 var(--fail)}
tr.consequence>th{box-shadow:inset 3px 0 #fb8f44}
.status-cell{white-space:nowrap}
.table-wrap{overflow:auto;max-height:75vh}
thead th{position:sticky;top:0;background:var(--card);z-index:1}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:6px 8px;border-bottom:1px solid var(--border);text-align:left;vertical-align:top}
thead th{font-size:12px;color:var(--muted);font-weight:600;white-space:nowrap;
box-shadow:inset 0 -1px var(--border)}
tbody th{font-weight:400;white-space:nowrap}
.num{text-align:right;white-space:nowrap}
tr.status-failed>th{box-shadow:inset 3px 0 var(--fail)}
td.detail{max-width:420px;overflow-wrap:anywhere}
.err{color:#a40e26}
.result{color:var(--fg)}
.progress-cell{white-space:nowrap}
.bar{display:inline-block;width:64px;height:6px;border-radius:3px;background:#eff2f5;
margin-right:6px;vertical-align:middle;overflow:hidden}
.bar span{display:block;height:100%;background:#8c959f}
tr.status-executed .bar span{background:var(--ok)}
tr.status-failed .bar span{background:var(--fail)}
.trace-row td{background:#fff8f8;padding:4px 8px 8px}
details summary{cursor:pointer}
pre.traceback{margin:6px 0 0;padding:10px;background:#fff;border:1px solid #ffcecb;
border-radius:6px;overflow:auto;max-height:320px;white-space:pre}
.finals{margin:10px 0 0;color:var(--muted)}
.swatch{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:7px;
background:var(--ack);vertical-align:-1px}
.swatch.c0{background:var(--c0)}.swatch.c1{background:var(--c1)}.swatch.c2{background:var(--c2)}
.swatch.c3{background:var(--c3)}.swatch.c4{background:var(--c4)}.swatch.c5{background:var(--c5)}
.swatch.c6{background:var(--c6)}.swatch.c7{background:var(--c7)}
.controls{display:flex;flex-wrap:wrap;align-items:center;gap:8px 20px;margin:0 0 8px;
font-size:13px}
.controls select{font:inherit;font-size:13px}
.key{color:var(--muted);display:inline-flex;align-items:center;gap:6px}
.key i{display:inline-block;width:22px;height:0;border-top:2px solid var(--c0)}
.key i.k-ack{border-top:2px dashed var(--ack)}
.key i.k-drop{border-top-color:var(--fail)}
.key i.k-ended{border-top:2px dotted var(--ack)}
.note,.empty{color:var(--muted);margin:4px 0 8px}
.chart-wrap{overflow:auto;max-height:80vh}
svg.chart{display:block;width:100%;height:auto;font-size:12px}
svg text{fill:var(--fg)}
.axis text{fill:var(--muted);font-size:11px}
.axis .axis-title{font-size:11px}
.grid{stroke:var(--grid);stroke-width:1}
.lane-bg{fill:var(--card)}
.lane.odd .lane-bg{fill:var(--lane)}
.lane{cursor:pointer}
.lane.hl .lane-bg{fill:#fff8c5}
.lane.root-cause .lane-bg{fill:#ffebe9}
.lane.root-cause .lane-label{fill:var(--fail);font-weight:700}
.lane-cause{fill:var(--fail);font-weight:600}
.lane.consequence .lane-cause{fill:#953800;font-weight:400}
.lane-axis{stroke:#d1d9e0;stroke-width:1}
.lane-label{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
.lane-label.small{font-size:10px}
.lane-role{fill:var(--muted);font-size:10.5px}
.dot.c0,.end.c0{fill:var(--c0)}.dot.c1,.end.c1{fill:var(--c1)}.dot.c2,.end.c2{fill:var(--c2)}
.dot.c3,.end.c3{fill:var(--c3)}.dot.c4,.end.c4{fill:var(--c4)}.dot.c5,.end.c5{fill:var(--c5)}
.dot.c6,.end.c6{fill:var(--c6)}.dot.c7,.end.c7{fill:var(--c7)}
.active{stroke-width:4;stroke-linecap:round;opacity:.28}
.active.c0{stroke:var(--c0)}.active.c1{stroke:var(--c1)}.active.c2{stroke:var(--c2)}
.active.c3{stroke:var(--c3)}.active.c4{stroke:var(--c4)}.active.c5{stroke:var(--c5)}
.active.c6{stroke:var(--c6)}.active.c7{stroke:var(--c7)}
.end-mark.failed{stroke:var(--fail);stroke-width:2.5;fill:none}
.end-mark.stopped{fill:var(--muted)}
.msg{fill:none;stroke-width:1.6;opacity:.8}
circle.msg{stroke-width:1.6;fill:var(--card)}
.msg:hover{stroke-width:3.5;opacity:1}
.msg.c0{stroke:var(--c0);marker-end:url(#ah0)}.msg.c1{stroke:var(--c1);marker-end:url(#ah1)}
.msg.c2{stroke:var(--c2);marker-end:url(#ah2)}.msg.c3{stroke:var(--c3);marker-end:url(#ah3)}
.msg.c4{stroke:var(--c4);marker-end:url(#ah4)}.msg.c5{stroke:var(--c5);marker-end:url(#ah5)}
.msg.c6{stroke:var(--c6);marker-end:url(#ah6)}.msg.c7{stroke:var(--c7);marker-end:url(#ah7)}
.msg.ack{stroke:var(--ack);stroke-dasharray:3 2;stroke-width:1.2;opacity:.55;
marker-end:url(#ah-ack)}
.msg.drop{stroke:var(--fail);stroke-width:2.2;opacity:1;stroke-dasharray:none;
marker-end:url(#ah-drop)}
.msg.drop.ended{stroke:var(--ack);stroke-width:1.2;opacity:.7;stroke-dasharray:1 2;
marker-end:url(#ah-ended)}
.hide-acks .msg.ack{display:none}
.focus .msg{opacity:.05}
.focus .msg.hl{opacity:1}
.line{fill:none;stroke-width:2;stroke-linejoin:round}
.line.c0{stroke:var(--c0)}.line.c1{stroke:var(--c1)}.line.c2{stroke:var(--c2)}
.line.c3{stroke:var(--c3)}.line.c4{stroke:var(--c4)}.line.c5{stroke:var(--c5)}
.line.c6{stroke:var(--c6)}.line.c7{stroke:var(--c7)}
.end.failed{stroke:var(--fail);stroke-width:2.5}
.series:hover .line{stroke-width:3.5}
.legend{display:flex;flex-wrap:wrap;gap:4px 22px;list-style:none;margin:8px 0 0;padding:0;
font-size:13px}
.legend li{display:inline-flex;align-items:center;gap:6px}
.key-line{flex:none}
#progress-note{font-size:12px}
details.log{border-top:1px solid var(--border);padding:6px 0}
details.log:first-of-type{border-top:0}
.log-lines{list-style:none;margin:6px 0 0;padding:8px 10px;background:var(--bg);
border-radius:6px;max-height:360px;overflow:auto}
.log-lines li{display:grid;grid-template-columns:64px 56px 1fr;gap:8px;padding:1px 0}
.log-lines .t{color:var(--muted);text-align:right}
.log-lines .lv{color:var(--muted)}
.log-lines .txt{white-space:pre-wrap;overflow-wrap:anywhere}
.lv-warn .lv,.lv-warning .lv{color:var(--warn)}
.lv-error .lv,.lv-crit .lv,.lv-critical .lv,.lv-error .txt,.lv-crit .txt{color:var(--fail)}
:focus-visible{outline:2px solid #0969da;outline-offset:2px}
"""

# Progressive enhancement only: the page is complete without it.
_JS: Final = """
(function () {
  "use strict";
  var svg = document.getElementById("timeline-svg");
  var acks = document.getElementById("show-acks");
  var pick = document.getElementById("focus-node");
  var lit = [];
  function showAcks() { if (svg && acks) { svg.classList.toggle("hide-acks", !acks.checked); } }
  function focusNode(i) {
    lit.forEach(function (el) { el.classList.remove("hl"); });
    lit = [];
    if (!svg) { return; }
    svg.classList.toggle("focus", i !== "");
    if (i === "") { return; }
    lit = Array.prototype.slice.call(svg.querySelectorAll(
      '[data-s="' + i + '"],[data-r="' + i + '"],.lane[data-i="' + i + '"]'));
    lit.forEach(function (el) { el.classList.add("hl"); });
  }
  if (acks) { acks.addEventListener("change", showAcks); showAcks(); }
  if (pick) {
    pick.addEventListener("change", function () { focusNode(pick.value); });
    focusNode(pick.value);
    if (svg) {
      svg.querySelectorAll(".lane").forEach(function (lane) {
        lane.addEventListener("click", function () {
          pick.value = pick.value === lane.dataset.i ? "" : lane.dataset.i;
          focusNode(pick.value);
        });
      });
    }
  }
  var link = document.getElementById("download-json");
  if (link) {
    link.addEventListener("click", function () {
      var text = document.getElementById("run-data").textContent;
      var pretty = JSON.stringify(JSON.parse(text), null, 2);
      link.href = URL.createObjectURL(new Blob([pretty], {type: "application/json"}));
    });
  }
})();
"""


def render_report(run: Mapping[str, Any]) -> str:
    """Render a run summary as one self-contained HTML page.

    The page loads nothing from the network. It embeds ``run`` as JSON in
    ``<script type="application/json" id="run-data">`` with ``<``, ``>`` and ``&`` escaped, so
    log text or tracebacks cannot close the element. At most :data:`MAX_DRAWN_MESSAGES` messages
    are drawn on the timeline (all dropped ones, then an even sample); the page says so when it
    samples. ``run`` is not modified.

    This is CPU work proportional to the run's size (a few milliseconds per thousand messages);
    from async code with very large runs, call it through ``anyio.to_thread.run_sync``.

    Args:
        run: The run summary, shaped as ``OUT/run.json`` (see ``docs/run-json.md``). Missing or
            malformed fields render as "—" rather than raising.

    Returns:
        The HTML document.

    Raises:
        TypeError: If ``run`` holds values that cannot be encoded as JSON even as strings.
    """
    parsed = _Run.parse(run)
    title = f"flame-async run · {_text(run.get('script'), 'analysis')}"
    body = "".join(
        (_header(parsed), _summary(parsed), _timeline(parsed), _progress(parsed), _logs(parsed))
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="generator" content="flame-async">'
        # An empty icon keeps browsers from asking the file system or network for favicon.ico.
        '<link rel="icon" href="data:,">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{body}</main>"
        f'<script type="application/json" id="run-data">{_embed(run)}</script>'
        f"<script>{_JS}</script></body></html>\n"
    )


def write_report(run: Mapping[str, Any], path: Path) -> Path:
    """Render ``run`` with :func:`render_report` and write it to ``path``.

    The file is written next to its final name and then renamed, so a reader never sees half a
    report. Missing parent directories are created. This blocks on file I/O; from async code,
    call it through ``anyio.to_thread.run_sync``.

    Args:
        run: The run summary, shaped as ``OUT/run.json``.
        path: Where to write the page, usually ``OUT/report.html``.

    Returns:
        ``path``.

    Raises:
        OSError: If the file cannot be written.
        TypeError: If ``run`` cannot be encoded as JSON.
    """
    page = render_report(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_text(page, encoding="utf-8")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path
