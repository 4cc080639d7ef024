"""Unit tests of render_report: structure, escaping, empty and very large runs."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

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
