"""Helpers for the report tests: a realistic run summary and a tiny HTML element index."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

STARTED = datetime(2026, 11, 22, 4, 20, 0, 123000, tzinfo=UTC)

TRACEBACK = """\
Traceback (most recent call last):
  File "/work/main/flame_async/runner.py", line 162, in _run_node
    outcome.result = await main()
                     ^^^^^^^^^^^^
  File "examples/fedavg_logreg.py", line 88, in main
    weights = await local_round(flame, data, global_weights)
              ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "examples/fedavg_logreg.py", line 54, in local_round
    raise ValueError(f"gradient is not finite in round {round_no}: <nan> & </script>")
ValueError: gradient is not finite in round 15: <nan> & </script>
"""


def _iso(seconds: float) -> str:
    return (STARTED + timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


def sample_run(*, rounds: int = 17, seed: int = 7) -> dict[str, Any]:
    """A federated-averaging run on 4 nodes where ``node-4`` fails in round 15.

    Each round the aggregator ``node-1`` sends the global model to the three analyzers, which ack
    it and answer with a local update that the aggregator acks: 12 deliveries per round (about
    200 in all). When ``node-4`` fails it tells its peers; the copy to ``node-3`` is lost
    (dropped while ``node-3`` runs). After that the aggregator's sends to ``node-4`` are dropped
    because it had ended; two rounds later the run stops the other nodes. ``node-2`` and
    ``node-3`` report the same progress at the same times (their lines overlap).
    """
    rng = random.Random(seed)
    analyzers = ["node-2", "node-3", "node-4"]
    fail_round = 15
    fail_t = 0.0
    messages: list[dict[str, Any]] = []
    progress: dict[str, list[list[Any]]] = {n: [] for n in ["node-1", *analyzers]}
    logs: dict[str, list[list[Any]]] = {n: [] for n in ["node-1", *analyzers]}
    t = 0.02
    sequence = 0

    def deliver(sender: str, recipient: str, category: str, size: int, **extra: Any) -> None:
        nonlocal t, sequence
        sequence += 1
        t += rng.uniform(0.0005, 0.004)
        ack = extra.pop("ack", False)
        outcome = extra.pop("outcome", "delivered")
        messages.append(
            {
                "t": round(t, 4),
                "sender": sender,
                "recipient": recipient,
                "category": category,
                "message_id": f"{sender}-{sequence:04x}",
                "size": size,
                "outcome": outcome,
                "attempts": extra.pop("attempts", 1),
                "ack": ack,
                "recipient_ended": outcome != "delivered" and recipient == "node-4",
            }
        )

    for node, series in progress.items():
        series.append([0.01, 0, "executing"])
        logs[node].append([0.015, "info", f"{node} started, waiting for peers"])
    ended = 0.0
    for round_no in range(1, rounds + 1):
        alive = [a for a in analyzers if not (a == "node-4" and round_no > fail_round)]
        for analyzer in analyzers:
            if analyzer in alive:
                deliver("node-1", analyzer, "global_model", 2048 + rng.randrange(64))
                deliver(analyzer, "node-1", "global_model", 96, ack=True)
            else:
                deliver("node-1", analyzer, "global_model", 2048, outcome="dropped", attempts=5)
        t += rng.uniform(0.02, 0.05)  # local training
        for analyzer in alive:
            if analyzer == "node-4" and round_no == fail_round:
                continue  # fails instead of answering
            deliver(analyzer, "node-1", "local_update", 1900 + rng.randrange(300))
            deliver("node-1", analyzer, "local_update", 96, ack=True)
            progress[analyzer].append([round(t, 4), round(100 * round_no / 20), "executing"])
        progress["node-1"].append([round(t + 0.002, 4), round(100 * round_no / 20), "executing"])
        logs["node-1"].append([round(t, 4), "info", f"round {round_no}: averaged {len(alive)}"])
        if round_no == fail_round:
            logs["node-4"].append([round(t, 4), "error", "gradient is not finite: <nan>"])
            progress["node-4"].append([round(t, 4), progress["node-4"][-1][1], "failed"])
            fail_t = t
            deliver("node-4", "node-1", "flame_async.node_status", 180)
            deliver("node-4", "node-2", "flame_async.node_status", 180)
            deliver("node-4", "node-3", "flame_async.node_status", 180, outcome="dropped")
        if round_no > fail_round:
            logs["node-1"].append([round(t, 4), "warn", "node-4 did not answer; </script> ok"])
        ended = t + 0.01
    nodes: list[dict[str, Any]] = []
    for node_id in progress:
        sent = sum(1 for m in messages if m["sender"] == node_id and m["outcome"] == "delivered")
        received = sum(
            1 for m in messages if m["recipient"] == node_id and m["outcome"] == "delivered"
        )
        failed = node_id == "node-4"
        end = fail_t if failed else ended
        nodes.append(
            {
                "node_id": node_id,
                "role": "aggregator" if node_id == "node-1" else "default",
                "status": "failed" if failed else "stopped",
                "started": _iso(0.004),
                "ended": _iso(end),
                "seconds": round(end - 0.004, 3),
                "progress": progress[node_id][-1][1],
                "messages_sent": sent,
                "messages_received": received,
                "bytes_sent": sum(m["size"] for m in messages if m["sender"] == node_id),
                "bytes_received": sum(m["size"] for m in messages if m["recipient"] == node_id),
                "result": None,
                "error": {
                    "type": "ValueError",
                    "message": "gradient is not finite in round 15: <nan> & </script>",
                    "traceback": TRACEBACK,
                }
                if failed
                else None,
                "waiting_for": [] if failed or node_id != "node-1" else ["node-4 (local_update)"],
                "root_cause": failed,
                "consequential": False,
            }
        )
    return {
        "format": 1,
        "analysis_id": "5f0c3f9e-2b1a-4c7d-9e55-0b6a7f3d2c11",
        "project_id": "a1d2c3b4-0000-4e5f-8a9b-112233445566",
        "mode": "inprocess",
        "script": "examples/fedavg_logreg.py",
        "started": _iso(0),
        "ended": _iso(ended),
        "seconds": round(ended, 3),
        "ok": False,
        "timed_out": False,
        "stop_reason": "node node-4 failed",
        "dropped_to_running": sum(
            m["outcome"] != "delivered" and not m["recipient_ended"] for m in messages
        ),
        "dropped_to_ended": sum(m["recipient_ended"] for m in messages),
        "nodes": nodes,
        "messages": messages,
        "progress": progress,
        "logs": logs,
        "final_results": [],
    }


class Elements(HTMLParser):
    """Every start tag of a page with its attributes, to query like a (very) small DOM."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def with_class(self, name: str) -> list[dict[str, str | None]]:
        """Attributes of the elements carrying CSS class ``name``."""
        return [a for _, a in self.tags if name in (a.get("class") or "").split()]

    def by_id(self, element_id: str) -> dict[str, str | None] | None:
        return next((a for _, a in self.tags if a.get("id") == element_id), None)

    def count(self, tag: str) -> int:
        return Counter(t for t, _ in self.tags)[tag]


def embedded_json(page: str) -> str:
    """The text of the ``#run-data`` script element."""
    start_tag = '<script type="application/json" id="run-data">'
    start = page.index(start_tag) + len(start_tag)
    return page[start : page.index("</script>", start)]
