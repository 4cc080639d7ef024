"""Results end to end on the local platform: intermediate, final, local and pickle safety."""

from __future__ import annotations

import pickle
from pathlib import Path

import anyio
import numpy as np
import pandas as pd
import pytest

from flame_async import (
    FlameSDK,
    InvalidArgument,
    NotAggregatorError,
    NotFoundError,
    PickleNotAllowed,
    UnknownNodeError,
    codecs,
)

from .conftest import running

pytestmark = pytest.mark.slow


class _Touch:
    """Unpickling this creates a file: the canary for pickle safety."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.path,))


async def test_three_nodes_exchange_arrays_and_frames_and_submit_a_final_result(
    tmp_path: Path, transport: str
) -> None:
    out = tmp_path / "out"
    async with running(3, out_dir=out, transport=transport) as (platform, (agg, b, c)):
        frame = pd.DataFrame(
            {
                "site": pd.Categorical(["x", "y", "x"]),
                "v": [1.5, None, 3.0],
                "t": pd.date_range("2026-01-01", periods=3, tz="Europe/Berlin"),
            }
        )
        arrays = {b.node_id: np.arange(12.0).reshape(3, 4), c.node_id: np.eye(3, dtype=np.int32)}

        async def analyzer(flame: FlameSDK) -> None:
            report = await flame.send_intermediate_result([agg.node_id], arrays[flame.node_id])
            assert report.ok
            table = await flame.await_intermediate_result(agg.node_id, timeout=10)
            pd.testing.assert_frame_equal(table, frame)

        async with anyio.create_task_group() as tg:
            tg.start_soon(analyzer, b)
            tg.start_soon(analyzer, c)
            got = await agg.await_intermediate_results([b.node_id, c.node_id], timeout=10)
            await agg.send_intermediate_result([b.node_id, c.node_id], frame)
        for node, array in arrays.items():
            np.testing.assert_array_equal(got[node], array)
            assert got[node].dtype == array.dtype
        total = sum(float(a.sum()) for a in got.values())
        info = await agg.send_result({"total": total}, filename="total.json")
    (final,) = platform.final_results(agg.node_id)
    assert final.name == "total.json" and final.parent.parent == out / "final"
    assert final.read_bytes() == codecs.encode_final({"total": total}).to_bytes()
    assert info.result_size == final.stat().st_size


async def test_an_intermediate_result_can_be_read_once(transport: str) -> None:
    async with running(2, transport=transport) as (_, (a, b)):
        infos = await a.save_intermediate_result(np.ones(4), receivers=[b.node_id])
        result_id = infos[b.node_id].result_id
        assert "remote_node_id=" in result_id  # the id flamesdk passes on
        np.testing.assert_array_equal(await b.get_intermediate_result(result_id), np.ones(4))
        with pytest.raises(NotFoundError, match="already been read"):
            await b.get_intermediate_result(result_id)


async def test_local_results_tagged_in_one_run_are_found_in_the_next(
    tmp_path: Path, transport: str
) -> None:
    project = "proj-persist"
    async with running(
        2, project_id=project, state_dir=tmp_path / "state", transport=transport
    ) as (_, (a, _b)):
        await a.save_intermediate_result_local(np.arange(3), tag="round-1")
        await a.save_intermediate_result_local({"k": "v"}, tag="round-1", filename="meta.json")
        await a.save_intermediate_result_local("untagged")
    async with running(
        2, project_id=project, state_dir=tmp_path / "state", transport=transport
    ) as (_, (a, _b)):
        assert await a.get_local_tags() == ["round-1"]
        listed = await a.list_intermediate_local_results()
        assert [i.other["tag"] for i in listed] == ["round-1", "round-1"]
        values = await a.get_intermediate_result_local(tag="round-1")
        np.testing.assert_array_equal(values[0], np.arange(3))
        assert values[1] == {"k": "v"}
        assert await a.get_intermediate_result_local(tag="round-1", which="last") == {"k": "v"}
        by_id = await a.get_intermediate_result_local(listed[0].result_id)
        np.testing.assert_array_equal(by_id, np.arange(3))


async def test_pickled_payload_without_opt_in_is_refused_and_never_unpickled(
    tmp_path: Path, transport: str
) -> None:
    canary = tmp_path / "pwned"
    async with running(2, transport=transport) as (_, (a, b)):
        infos = await a.save_intermediate_result(
            _Touch(canary), receivers=[b.node_id], allow_pickle=True
        )
        with pytest.raises(PickleNotAllowed, match="allow_pickle"):
            await b.get_intermediate_result(infos[b.node_id].result_id)
        assert not canary.exists()
        # a raw pickle as flamesdk stores it, without our header
        raw = pickle.dumps(_Touch(canary))
        info = await a.save_intermediate_result_local(raw)  # stored as bytes
        stored = await a.get_intermediate_result_local(info.result_id)
        assert stored == raw and not canary.exists()


async def test_pickle_is_never_used_without_opt_in_on_upload(transport: str) -> None:
    async with running(2, transport=transport) as (_, (a, b)):
        with pytest.raises(PickleNotAllowed, match="allow_pickle"):
            await a.save_intermediate_result({1, 2}, receivers=[b.node_id])


async def test_errors_are_specific_and_raised_before_io(tmp_path: Path, transport: str) -> None:
    async with running(2, transport=transport) as (_, (agg, b)):
        with pytest.raises(NotAggregatorError, match="only the aggregator"):
            await b.send_result({"x": 1})
        with pytest.raises(InvalidArgument, match="invalid tag"):
            await b.save_intermediate_result_local(1, tag="-Bad_Tag-")
        with pytest.raises(UnknownNodeError):
            await b.save_intermediate_result(1, receivers=["nobody"])
        with pytest.raises(InvalidArgument, match="finite number"):
            await agg.send_result("text", local_dp={"epsilon": 1, "sensitivity": 1})
        with pytest.raises(NotFoundError, match="does not exist"):
            await b.get_intermediate_result(
                "0d4c7f36-9c5a-4a1b-a1d4-6f0e5a1b2c3d", sender=agg.node_id
            )


async def test_local_dp_final_result_is_noisy_but_near(tmp_path: Path, transport: str) -> None:
    async with running(2, out_dir=tmp_path, transport=transport) as (platform, (agg, _)):
        await agg.send_result(
            100.0, filename="count.txt", local_dp={"epsilon": 10, "sensitivity": 1}
        )
    (final,) = platform.final_results(agg.node_id)
    assert abs(float(final.read_text()) - 100.0) < 10  # Laplace scale 0.1: 100 sigmas of room
