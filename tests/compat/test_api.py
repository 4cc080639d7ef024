"""``FlameCoreSDK``'s flamesdk shapes and the differences where flamesdk's behaviour is a bug.

Each node's ``FlameCoreSDK`` is built and called in a worker thread (its methods block), with
its node's environment and transport, against a local platform in the test's event loop.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import anyio
import pytest

from flame_async._transport import Transport
from flame_async.compat import flamesdk as compat
from flame_async.compat.flamesdk import (
    AnalysisEnded,
    FlameCoreSDK,
    FlameCoreSDKError,
    Message,
)
from flame_async.compat.flamesdk._ending import raise_in_thread
from flame_async.config import FlameConfig, use_environ, use_transport
from flame_async.errors import PickleNotAllowed
from flame_async.local import LocalPlatform

pytestmark = pytest.mark.slow

T = TypeVar("T")

FLAMESDK_META_FIELDS = {
    "type",
    "category",
    "id",
    "akn_id",
    "status",
    "sender",
    "created_at",
    "arrived_at",
    "number",
}


async def call(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A blocking compat call, off the test's event loop (which serves the platform)."""
    return await anyio.to_thread.run_sync(partial(func, *args, **kwargs))


@asynccontextmanager
async def compat_nodes(count: int = 3) -> AsyncIterator[dict[str, FlameCoreSDK]]:
    async with LocalPlatform(count, webhook_retry_initial=0.01, po_interval=3600.0) as platform:
        flames: dict[str, FlameCoreSDK] = {}
        try:
            for node in platform.nodes:
                transport = platform.transport_for(node)

                def given(config: FlameConfig, t: Transport = transport) -> Transport:
                    return t

                with use_environ(node.env), use_transport(given):
                    flames[node.node_id] = await call(FlameCoreSDK, end_thread_when_finished=False)
            yield flames
        finally:
            for flame in flames.values():
                await call(flame.close)


class Opaque:
    """A value without a typed format (flamesdk would pickle it)."""


async def test_identity_has_flamesdk_shapes() -> None:
    async with compat_nodes() as flames:
        aggregator, analyzer = flames["node-1"], flames["node-2"]
        assert aggregator.get_role() == "aggregator"
        assert analyzer.get_role() == "default"
        assert aggregator.get_aggregator_id() is None  # participants exclude the node itself
        assert analyzer.get_aggregator_id() == "node-1"
        assert analyzer.get_participants() == [
            {"nodeId": "node-1", "nodeType": "aggregator"},
            {"nodeId": "node-3", "nodeType": "default"},
        ]
        assert analyzer.get_participant_ids() == ["node-1", "node-3"]
        assert analyzer.get_id() == analyzer.config.node_id == "node-2"
        assert analyzer.get_analysis_id() == analyzer.config.analysis_id
        assert analyzer.config.finished is False


async def test_messages_come_back_in_flamesdk_shape() -> None:
    async with compat_nodes() as flames:
        sender, receiver = flames["node-2"], flames["node-3"]
        assert await call(sender.send_message, ["node-3"], "numbers", {"x": 1}) == (
            ["node-3"],
            [],
        )
        await call(sender.send_message, ["node-3"], "numbers", {"x": 2})
        answers = await call(receiver.await_messages, ["node-2"], "numbers", timeout=10)
        messages = answers["node-2"]
        assert messages is not None
        assert [m.body["x"] for m in messages] == [1, 2]  # every unread one, in order
        first = messages[0]
        assert isinstance(first, Message)
        assert set(first.body["meta"]) == FLAMESDK_META_FIELDS
        assert first.body["meta"]["sender"] == "node-2"
        assert first.body["meta"]["akn_id"] == "node-3"
        assert first.body["meta"]["status"] == "read"
        assert first.recipients == ["node-2"]
        assert len(await call(receiver.get_messages, "read")) == 2
        assert await call(receiver.delete_messages, [first.body["meta"]["id"]]) == 1
        assert await call(receiver.clear_messages, "all") == 1  # flamesdk: 0, whatever matched


async def test_await_messages_gives_none_for_a_silent_sender() -> None:
    async with compat_nodes() as flames:
        answers = await call(flames["node-3"].await_messages, ["node-2"], "never", timeout=1)
        assert answers == {"node-2": None}


async def test_send_and_wait_without_timeout_does_not_crash() -> None:
    async with compat_nodes() as flames:
        asker, answerer = flames["node-2"], flames["node-3"]

        def answer() -> None:
            got = answerer.await_messages(["node-2"], "question")
            assert got["node-2"] is not None
            answerer.send_message(["node-2"], "question", {"answer": 42})

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, answer)
            replies = await call(
                asker.send_message_and_wait_for_responses, ["node-3"], "question", {"q": 1}
            )
        reply = replies["node-3"]
        assert reply is not None
        assert reply[0].body["answer"] == 42


async def test_intermediate_data_between_compat_nodes_is_typed_not_pickled() -> None:
    async with compat_nodes() as flames:
        analyzer, aggregator = flames["node-2"], flames["node-1"]
        acked, missing = await call(analyzer.send_intermediate_data, ["node-1"], {"sum": [1, 2]})
        assert (acked, missing) == (["node-1"], [])
        got = await call(aggregator.await_intermediate_data, ["node-2"], timeout=10)
        assert got == {"node-2": {"sum": [1, 2]}}
        with pytest.raises(PickleNotAllowed):  # flame-async peers get no pickle
            await call(analyzer.send_intermediate_data, ["node-1"], Opaque())


async def test_local_data_by_id_and_by_tag() -> None:
    async with compat_nodes() as flames:
        node = flames["node-2"]
        saved = await call(node.save_intermediate_data, {"a": 1}, "local", tag="round-1")
        assert saved["status"] == "success"
        assert await call(node.get_intermediate_data, "local", query=saved["id"]) == {"a": 1}
        await call(node.save_intermediate_data, Opaque(), "local", tag="round-1")
        tagged = await call(node.get_intermediate_data, "local", tag="round-1", tag_option="all")
        assert tagged[0] == {"a": 1}
        assert isinstance(tagged[1], Opaque)  # this node's own storage: pickles allowed
        assert await call(node.get_local_tags, "round") == ["round-1"]
        with pytest.raises(FlameCoreSDKError):
            await call(node.save_intermediate_data, 1, "global")  # no remote_node_ids


async def test_final_result_is_formatted_as_flamesdk_does() -> None:
    async with compat_nodes() as flames:
        aggregator = flames["node-1"]
        assert await call(aggregator.submit_final_result, 18.0) == {"status": "success"}
        assert await call(
            aggregator.submit_final_result, [b"png", "text"], ["bytes", "str"], True
        ) == [{"status": "success"}, {"status": "success"}]


async def test_flame_log_error_fails_at_once_instead_of_sleeping() -> None:
    async with compat_nodes() as flames:
        node = flames["node-2"]
        await call(node.flame_log, ["a", "b"], sep="-", log_type="notice")
        with pytest.raises(FlameCoreSDKError, match="broken"):
            await call(node.flame_log, "broken", log_type="error")
        with pytest.raises(FlameCoreSDKError, match="unknown log_type"):
            await call(node.flame_log, "x", log_type="loud")


async def test_progress_is_monotonic_percent() -> None:
    async with compat_nodes() as flames:
        node = flames["node-2"]
        await call(node.set_progress, 40.9)
        await call(node.set_progress, 10)  # ignored, as flamesdk
        assert node.get_progress() == 40


async def test_analysis_finished_finishes_the_peers() -> None:
    async with compat_nodes() as flames:
        aggregator, analyzer = flames["node-1"], flames["node-2"]
        assert await call(aggregator.analysis_finished) is True
        assert aggregator.config.finished
        with pytest.raises(AnalysisEnded):  # the node has left the analysis
            await call(aggregator.get_messages)
        with pytest.raises(AnalysisEnded):  # the announcement ends the peer's wait too
            await call(analyzer.await_messages, ["node-1"], "anything")
        assert analyzer.config.finished


def test_import_flamesdk_resolves_to_the_compat_layer() -> None:
    compat.install()
    try:
        flamesdk = importlib.import_module("flamesdk")
        assert flamesdk.FlameCoreSDK is FlameCoreSDK
        with pytest.raises(ModuleNotFoundError, match="compatibility layer"):
            importlib.import_module("flamesdk.resources.node_config")
    finally:
        compat.uninstall()
    assert "flamesdk" not in sys.modules


def test_an_asynchronous_exit_ends_a_bare_busy_loop() -> None:
    started = threading.Event()
    ended: list[AnalysisEnded] = []

    def spin() -> None:
        started.set()
        try:
            while True:
                pass
        except AnalysisEnded as exc:
            ended.append(exc)

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    assert started.wait(10)
    assert thread.ident is not None
    assert raise_in_thread(thread.ident, AnalysisEnded)
    thread.join(10)
    assert not thread.is_alive()
    assert len(ended) == 1
    assert ended[0].code == 0


OBSERVATIONS = {
    "resourceType": "Bundle",
    "total": 3,
    "entry": [
        {
            "resource": {
                "resourceType": "Observation",
                "code": {"coding": [{"system": "loinc", "code": "height"}]},
                "subject": {"reference": f"Patient/{patient}"},
                "valueQuantity": {"value": value},
            }
        }
        for patient, value in (("p1", 180), ("p2", 165), ("p1", 181))
    ]
    + [
        {
            "resource": {
                "resourceType": "Observation",
                "code": {"coding": [{"code": "weight"}]},
                "subject": {"reference": "Patient/p2"},
                "valueQuantity": {"value": 61},
            }
        }
    ],
}


async def test_fhir_to_csv_pivots_as_flamesdk() -> None:
    async with compat_nodes() as flames:
        node = flames["node-1"]  # no data sources: the one page given is all there is
        keys = {
            "col_key_seq": "resource.code.coding.code",
            "value_key_seq": "resource.valueQuantity.value",
            "input_resource": "Observation",
            "row_key_seq": "resource.subject.reference",
        }
        table = await call(node.fhir_to_csv, OBSERVATIONS, **keys, output_type="dict")
        assert table == {
            "height": {"Patient/p1": 181, "Patient/p2": 165},  # the last value per cell
            "weight": {"Patient/p2": 61},
        }
        csv = await call(node.fhir_to_csv, OBSERVATIONS, **keys, row_col_name="patient")
        assert isinstance(csv, io.StringIO)
        assert csv.read() == "patient,height,weight\nPatient/p1,181,\nPatient/p2,165,61"
        only_p2 = await call(
            node.fhir_to_csv, OBSERVATIONS, **keys, row_id_filters=["p2"], output_type="dict"
        )
        assert only_p2 == {"height": {"Patient/p2": 165}, "weight": {"Patient/p2": 61}}
        with pytest.raises(FlameCoreSDKError):
            await call(node.fhir_to_csv, OBSERVATIONS, "a", "b", "Patient")


async def test_a_call_whose_task_is_cancelled_before_it_runs_still_wakes_its_caller() -> None:
    from flame_async.compat.flamesdk._core import _Reply

    reply = _Reply()

    async def never_started() -> None:
        raise AssertionError("cancelled before its first step")

    task = asyncio.get_running_loop().create_task(never_started())
    task.add_done_callback(reply.ended)  # as FlameCoreSDK._start does
    task.cancel()  # e.g. the loop shutting down with the call still queued
    with pytest.raises(asyncio.CancelledError):
        await task
    assert reply.done.acquire(blocking=False)  # the caller would not block for ever
    assert isinstance(reply.error, asyncio.CancelledError)  # _call: AnalysisEnded
