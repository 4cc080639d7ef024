"""Chaos-mode fault specs: parsing, printing back for a replay, and seeded decisions."""

from __future__ import annotations

import pytest

from flame_async.errors import InvalidArgument
from flame_async.local import ApiOutage, FaultPlan, Faults


def test_a_spec_reads_and_prints_back_the_same_faults() -> None:
    spec = (
        "drop=0.1,dup=0.1,delay=0-50ms,reorder=0.05,webhook-5xx=0.05,webhook-reset=0.02,"
        "5xx=0.05,reset=0.01,broker-restart=3s,broker-restart=9s,api-down=node-2@2s+500ms,"
        "token=8s,seed=42"
    )
    faults = Faults.parse(spec)
    assert faults == Faults(
        seed=42,
        drop=0.1,
        duplicate=0.1,
        delay=(0.0, 0.05),
        reorder=0.05,
        webhook_5xx=0.05,
        webhook_reset=0.02,
        service_5xx=0.05,
        service_reset=0.01,
        broker_restarts=(3.0, 9.0),
        api_outages=(ApiOutage("node-2", 2.0, 0.5),),
        token_lifetime=8.0,
    )
    assert Faults.parse(faults.spec()) == faults
    assert faults.spec().startswith("seed=42,")


def test_without_a_seed_one_is_chosen_and_shown() -> None:
    faults = Faults.parse("drop=0.5")
    assert f"seed={faults.seed}" in faults.spec()
    assert Faults.parse(faults.spec()) == faults


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("drop", "has no value"),
        ("drop=2", "not a share between 0 and 1"),
        ("drop=often", "not a share"),
        ("delay=fast", "not a duration"),
        ("delay=50ms-10ms", "not a range"),
        ("api-down=node-2", r"NODE@START\+LENGTH"),
        ("token=1s", "too short"),
        ("seed=x", "not an integer"),
        ("explode=1", "unknown key 'explode'"),
    ],
)
def test_a_bad_spec_says_what_is_wrong_and_how_to_write_it(spec: str, expected: str) -> None:
    with pytest.raises(InvalidArgument, match=expected):
        Faults.parse(spec)


def test_an_outage_of_an_unknown_node_is_refused() -> None:
    faults = Faults.parse("api-down=node-9@1s+1s")
    with pytest.raises(InvalidArgument, match="node-9, not a node of this platform"):
        faults.check_nodes(["node-1", "node-2"])


def test_a_message_gets_the_same_fate_in_every_run_with_the_seed() -> None:
    faults = Faults.parse("drop=0.3,dup=0.3,delay=0-20ms,webhook-5xx=0.2,seed=7")
    messages: list[tuple[object, ...]] = [("node-1", "data", n, "message") for n in range(200)]

    def fates(plan: FaultPlan, order: list[tuple[object, ...]]) -> dict[object, object]:
        seen: dict[object, object] = {}
        for message in order:
            plan.copies("node-3", message)  # other traffic in between changes nothing
            seen[message] = (plan.copies("node-2", message), plan.webhook("node-2", message, 1))
        return seen

    first = FaultPlan(faults, 0.0)
    assert fates(first, list(messages)) == fates(FaultPlan(faults, 0.0), messages[::-1])
    assert first.injected["drop"] > 0 and first.injected["duplicate"] > 0
    assert first.injected["webhook-5xx"] > 0
    resends = [first.copies("node-2", messages[0]) for _ in range(20)]
    assert len({len(r) for r in resends}) > 1  # each resend is an occurrence of its own
    other = FaultPlan(Faults.parse("drop=0.3,dup=0.3,delay=0-20ms,webhook-5xx=0.2,seed=8"), 0)
    assert fates(other, messages) != fates(FaultPlan(faults, 0.0), messages)


def test_the_nth_request_on_a_route_gets_the_same_fate() -> None:
    faults = Faults.parse("5xx=0.3,reset=0.3,seed=3")
    routes = [("POST", "/message-broker/analyses/*/messages"), ("PUT", "/storage/intermediate")]

    def run(interleave: bool) -> list[object]:
        plan = FaultPlan(faults, 0.0)
        out: list[object] = []
        for _ in range(100):
            if interleave:
                plan.service("node-1", "POST", "/po/stream_logs")
            out.extend(plan.service("node-2", method, route) for method, route in routes)
        return out

    assert run(interleave=False) == run(interleave=True)
    assert {"502", "503", "reset-before", "reset-after"} <= set(run(interleave=False))


def test_schedules_count_from_the_start() -> None:
    plan = FaultPlan(Faults.parse("broker-restart=2s,api-down=node-2@1s+1s,seed=1"), 100.0)
    assert not plan.broker_down(101.9) and plan.broker_down(102.1) and not plan.broker_down(102.6)
    assert not plan.api_down("node-2", 100.9) and plan.api_down("node-2", 101.5)
    assert not plan.api_down("node-2", 102.0) and not plan.api_down("node-1", 101.5)
    assert plan.record() == {
        "spec": "seed=1,broker-restart=2s,api-down=node-2@1s+1s",
        "injected": {"api-down": 1},
    }
