"""Unit tests of render_report: structure, escaping, empty and very large runs."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from flame_async.report import MAX_DRAWN_MESSAGES, render_report, write_report

from .helpers import Elements, embedded_json, sample_run


def _message(t: float, sender: str, recipient: str, **extra: Any) -> dict[str, Any]:
    return {
        "t": t,
        "sender": sender,
        "recipient": recipient,
        "category": "local_value",
        "message_id": f"{sender}-{t}",
        "size": 312,
        "outcome": "delivered",
        "attempts": 1,
        "ack": False,
        **extra,
    }


def test_page_has_a_row_and_a_lane_per_node_and_a_mark_per_message(run: dict[str, Any]) -> None:
    page = Elements(render_report(run))

    node_ids = [n["node_id"] for n in run["nodes"]]
    assert [a["data-node"] for a in page.with_class("node-row")] == node_ids
    assert [a["data-node"] for a in page.with_class("lane")] == node_ids
    assert len(page.with_class("msg")) == len(run["messages"])
    assert len(page.with_class("ack")) == sum(m["ack"] for m in run["messages"])
    assert len(page.with_class("drop")) == sum(m["outcome"] == "dropped" for m in run["messages"])
    for section in ("summary", "timeline", "progress", "logs", "run-data", "show-acks"):
        assert page.by_id(section) is not None, section
    assert len(page.with_class("series")) == len(run["progress"])


def test_page_is_self_contained(run: dict[str, Any]) -> None:
    page = render_report(run)
    elements = Elements(page)

    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page
    assert not [a for t, a in elements.tags if t == "script" and a.get("src")]
    assert not [a for t, a in elements.tags if t == "link" and a.get("rel") == "stylesheet"]
    assert "@import" not in page
    assert "url(http" not in page


def test_header_shows_outcome_and_stop_reason(run: dict[str, Any]) -> None:
    page = render_report(run)

    assert 'id="outcome">failed<' in page
    assert "node node-4 failed" in page
    assert "examples/fedavg_logreg.py" in page
    assert run["analysis_id"] in page

    timed_out = {**run, "timed_out": True, "stop_reason": "timeout after 600 s"}
    assert 'id="outcome">timed out<' in render_report(timed_out)
    assert 'id="outcome">ok<' in render_report({**run, "ok": True, "stop_reason": None})


def test_failed_node_shows_error_and_traceback_in_details(run: dict[str, Any]) -> None:
    page = render_report(run)
    elements = Elements(page)

    assert [a["data-node"] for a in elements.with_class("trace-row")] == ["node-4"]
    assert "ValueError" in page
    assert "local_round(flame, data, global_weights)" in page


def test_script_end_tags_and_html_in_text_are_escaped(run: dict[str, Any]) -> None:
    hostile = '</script><script>alert("x")</script><!-- <b>bold</b> & \u2028'
    run["logs"]["node-2"].append([0.5, "info", hostile])
    run["nodes"][1]["result"] = hostile
    run["script"] = "<img src=x onerror=alert(1)>.py"
    run["messages"][0]["category"] = hostile

    page = render_report(run)

    # Only our own two script elements: the data and the behaviour.
    assert page.lower().count("<script") == 2
    assert page.lower().count("</script") == 2
    assert "<b>bold</b>" not in page
    assert "<img" not in page
    assert "&lt;/script&gt;&lt;script&gt;alert(&quot;x&quot;)" in page
    assert json.loads(embedded_json(page)) == run


def test_embedded_data_round_trips_and_caller_data_is_not_mutated(run: dict[str, Any]) -> None:
    before = copy.deepcopy(run)

    page = render_report(run)

    assert json.loads(embedded_json(page)) == run
    assert run == before


def test_empty_run_renders_notes_instead_of_charts() -> None:
    page = render_report({})
    elements = Elements(page)

    for section in ("summary", "timeline", "progress", "logs"):
        assert elements.by_id(section) is not None, section
    assert not elements.with_class("msg")
    assert "This run has no nodes." in page
    assert "No progress was reported" in page
    assert json.loads(embedded_json(page)) == {}


def test_run_without_messages_or_progress_still_draws_lanes(run: dict[str, Any]) -> None:
    run.update(messages=[], progress={}, logs={})

    page = render_report(run)
    elements = Elements(page)

    assert len(elements.with_class("lane")) == 4
    assert not elements.with_class("msg")
    assert "No messages were exchanged" in page
    assert "No progress was reported" in page
    assert "No log lines were recorded" in page


def test_malformed_fields_render_instead_of_raising() -> None:
    run = {
        "seconds": "soon",
        "nodes": [{"node_id": "a", "progress": None, "error": "boom"}, "junk"],
        "messages": [{"t": "x"}, {"t": 0.5, "sender": None, "recipient": "a"}, 7],
        "progress": {"a": [[0.1], ["t", 5], [0.2, 50, "executing"]], "b": "junk"},
        "logs": {"a": [[0.1, "info"], "plain line"]},
    }

    elements = Elements(render_report(run))

    assert [a["data-node"] for a in elements.with_class("lane")] == ["a", "?", "b"]
    assert len(elements.with_class("msg")) == 1


def test_thousands_of_messages_are_capped_with_every_drop_kept() -> None:
    nodes = [f"node-{i}" for i in range(1, 201)]
    messages = [
        _message(
            i * 0.001,
            nodes[i % 200],
            nodes[(i * 7 + 1) % 200],
            ack=i % 2 == 1,
            outcome="dropped" if i % 1000 == 0 else "delivered",
        )
        for i in range(20_000)
    ]
    run = {
        "seconds": 20.0,
        "nodes": [{"node_id": n, "role": "default", "status": "executed"} for n in nodes],
        "messages": messages,
        "progress": {n: [[0.0, 0, "executing"], [19.9, 100, "executed"]] for n in nodes},
    }

    page = render_report(run)
    elements = Elements(page)

    assert len(elements.with_class("msg")) == MAX_DRAWN_MESSAGES
    assert len(elements.with_class("drop")) == 20
    assert len(elements.with_class("lane")) == 200
    assert elements.by_id("timeline-note") is not None
    assert f"Showing {MAX_DRAWN_MESSAGES:,} of 20,000 messages" in page
    assert len(json.loads(embedded_json(page))["messages"]) == 20_000


def test_long_logs_show_the_last_lines_only(run: dict[str, Any]) -> None:
    run["logs"]["node-2"] = [[i * 0.01, "info", f"line {i:04d}"] for i in range(500)]

    page = render_report(run)

    logs = page.split('id="logs"')[1].split('id="run-data"')[0]
    assert "line 0450" in logs
    assert "line 0449" not in logs
    assert "last 50 of 500 lines" in page


def test_write_report_creates_parents_and_returns_the_path(
    run: dict[str, Any], tmp_path: Path
) -> None:
    target = tmp_path / "out" / "report.html"

    assert write_report(run, target) == target
    assert target.read_text(encoding="utf-8") == render_report(run)
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html"]


def test_sample_run_is_realistic() -> None:
    run = sample_run()

    assert len(run["nodes"]) == 4
    assert 180 <= len(run["messages"]) <= 220
    assert any(m["ack"] for m in run["messages"])
    assert [n["node_id"] for n in run["nodes"] if n["status"] == "failed"] == ["node-4"]


# --- failures: root cause and consequences -----------------------------------------------------


def _node(run: dict[str, Any], node_id: str) -> dict[str, Any]:
    return next(n for n in run["nodes"] if n["node_id"] == node_id)


def _classes(attributes: dict[str, str | None]) -> set[str]:
    return set((attributes.get("class") or "").split())


def test_root_cause_node_is_marked_in_header_row_and_lane(run: dict[str, Any]) -> None:
    peer = _node(run, "node-1")
    peer.update(
        status="failed",
        error={"type": "PeerFailed", "message": "node node-4 failed", "traceback": ""},
        consequential=True,
    )

    page = render_report(run)
    elements = Elements(page)

    rows = {a["data-node"]: _classes(a) for a in elements.with_class("node-row")}
    lanes = {a["data-node"]: _classes(a) for a in elements.with_class("lane")}
    assert "root-cause" in rows["node-4"] and "root-cause" in lanes["node-4"]
    assert "consequence" in rows["node-1"] and "consequence" in lanes["node-1"]
    for node_id in ("node-2", "node-3"):
        assert not {"root-cause", "consequence"} & (rows[node_id] | lanes[node_id])
    assert page.count(">root cause</span>") == 1  # the badge in node-4's row
    assert page.count(">in consequence</span>") == 1
    assert "· root cause</tspan>" in page and "· in consequence</tspan>" in page
    header = page.split('id="header"')[1].split("</header>")[0]
    assert 'id="root-cause"' in header and "node-4" in header and "ValueError" in header


def test_root_cause_is_worked_out_when_the_run_does_not_record_it(run: dict[str, Any]) -> None:
    for node in run["nodes"]:
        del node["root_cause"], node["consequential"]
    _node(run, "node-2").update(
        status="failed", error={"type": "PeerFailed", "message": "node-4 failed", "traceback": ""}
    )

    elements = Elements(render_report(run))

    rows = {a["data-node"]: _classes(a) for a in elements.with_class("node-row")}
    assert [n for n, c in rows.items() if "root-cause" in c] == ["node-4"]
    assert [n for n, c in rows.items() if "consequence" in c] == ["node-2"]


def test_a_run_without_failures_marks_no_root_cause(run: dict[str, Any]) -> None:
    for node in run["nodes"]:
        node.update(status="executed", error=None, root_cause=False)

    page = render_report({**run, "ok": True})

    assert not Elements(page).with_class("root-cause")
    assert 'id="root-cause"' not in page


# --- dropped copies: to nodes that had ended are no failure -------------------------------------


def _header(page: str) -> str:
    return page.split('id="header"')[1].split("</header>", maxsplit=1)[0]


def test_drops_to_ended_nodes_are_counted_apart_and_not_red(run: dict[str, Any]) -> None:
    page = render_report(run)
    elements = Elements(page)
    header = _header(page)

    drops = elements.with_class("drop")
    ended = [a for a in drops if "ended" in _classes(a)]
    assert len(drops) == 3
    assert len(ended) == 2 == run["dropped_to_ended"]
    assert all(a["data-r"] == "3" for a in ended)  # node-4's lane: it had failed
    assert "2 to nodes that had ended" in header
    assert '<span class="bad" id="messages-dropped"' in header and ">1 dropped<" in header


def test_a_run_whose_only_drops_went_to_ended_nodes_shows_no_red(run: dict[str, Any]) -> None:
    for message in run["messages"]:
        message["recipient_ended"] = message["outcome"] == "dropped"

    header = _header(render_report(run))

    assert "3 to nodes that had ended" in header
    assert "messages-dropped" not in header and "dropped<" not in header


def test_drops_after_the_recipients_end_count_as_ended_in_older_records(
    run: dict[str, Any],
) -> None:
    for message in run["messages"]:
        del message["recipient_ended"]

    page = render_report(run)

    # the two sends to node-4 after it failed; the copy to node-3 while it ran stays lost
    assert "2 to nodes that had ended" in _header(page)
    assert ">1 dropped<" in _header(page)
    assert len([a for a in Elements(page).with_class("drop") if "ended" in _classes(a)]) == 2


# --- progress: executed means 100 %, equal lines stay apart -------------------------------------


def _series(page: str) -> dict[str, tuple[float, list[tuple[float, float]]]]:
    """Per node: its vertical offset and its polyline's points."""
    section = page.split('id="progress"')[1].split("</section>", maxsplit=1)[0]
    found = {}
    for group in section.split('<g class="series"')[1:]:
        node = group.split('data-node="')[1].split('"')[0]
        dy = float(group.split('data-dy="')[1].split('"')[0])
        raw = group.split('points="')[1].split('"')[0]
        points = [(float(x), float(y)) for x, y in (p.split(",") for p in raw.split())]
        found[node] = (dy, points)
    return found


def test_an_executed_node_is_shown_at_100_percent_whatever_it_reported(
    run: dict[str, Any],
) -> None:
    node = _node(run, "node-2")
    node.update(status="executed", progress=50)

    page = render_report(run)

    row = page.split('data-node="node-2"')[1].split("</tr>")[0]
    assert "100%" in row and "50%" not in row
    dy, points = _series(page)["node-2"]
    top = 12.0  # the chart's 100 % line (report._progress)
    assert points[-1][1] == pytest.approx(top + dy, abs=0.1)
    assert "(last reported 85%)" in page  # the legend keeps what the node said


def test_equal_progress_lines_are_drawn_apart(run: dict[str, Any]) -> None:
    # node-2 and node-3 report the same percentages within milliseconds: one line would hide
    # the other
    assert [p[1] for p in run["progress"]["node-2"]] == [p[1] for p in run["progress"]["node-3"]]

    page = render_report(run)
    series = _series(page)

    offsets = [dy for dy, _ in series.values()]
    assert len(set(offsets)) == len(offsets) == 4
    assert max(offsets) - min(offsets) <= 12.0  # a narrow band: values stay readable
    ys2 = [y for _, y in series["node-2"][1]]
    ys3 = [y for _, y in series["node-3"][1]]
    assert all(a != b for a, b in zip(ys2, ys3, strict=True))
    assert Elements(page).by_id("progress-note") is not None
    assert len(Elements(page).with_class("key-line")) == 4  # the legend shows each line's style


def test_a_single_progress_line_is_not_moved(run: dict[str, Any]) -> None:
    run["progress"] = {"node-1": run["progress"]["node-1"]}

    page = render_report(run)

    assert _series(page)["node-1"][0] == 0
    assert Elements(page).by_id("progress-note") is None
