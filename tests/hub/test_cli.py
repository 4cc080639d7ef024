"""``flame-async hub ...``: the command line run as users run it (``python -m flame_async``),
against the real Hub and the emulator; exit codes 0 / 1 (Hub error) / 2 (usage)."""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio
import pydantic
import pytest

from flame_async.hub import F, HubClient, PasswordAuth, UploadFile
from flame_async.hub._cli import glue_dashed_values, parse_filter
from flame_async.hub.models import Analysis, AnalysisNode, Node
from flame_async.local import HubEmulator

from ._backends import HubConnection

MISSING = "00000000-0000-4000-8000-000000000000"


def environ(hub: HubConnection | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAME_HUB_")}
    if hub is not None:
        env |= {
            "FLAME_HUB_AUTH_URL": hub.auth_url,
            "FLAME_HUB_CORE_URL": hub.core_url,
            "FLAME_HUB_STORAGE_URL": hub.storage_url,
            "FLAME_HUB_USER": hub.user,
            "FLAME_HUB_PASSWORD": hub.password,
        }
    return env


async def cli(args: Sequence[str], env: Mapping[str, str]) -> tuple[int, str, str]:
    done = await anyio.run_process(
        [sys.executable, "-m", "flame_async", "hub", *args], env=dict(env), check=False
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


# -- arguments (no I/O) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name=cox", ("name", "cox")),
        ("online=true", ("online", True)),
        ("nodes=2", ("nodes", 2)),
        ("registry_id=null", ("registry_id", None)),
        ("type=aggregator,default", ("type", F.in_("aggregator", "default"))),
        ("type!=default", ("type", F.ne("default"))),
        ("type!=a,b", ("type", F.not_in("a", "b"))),
        ("name~=co", ("name", F.like("co"))),
        ("name!~=co", ("name", F.not_like("co"))),
        ("created_at>=2026-01-01", ("created_at", F.ge("2026-01-01"))),
        ("nodes<3", ("nodes", F.lt(3))),
        ("project.name=x", ("project.name", "x")),
    ],
)
def test_filter_flags_map_to_the_operators(text: str, expected: object) -> None:
    assert parse_filter(text) == expected


def test_a_filter_flag_without_an_operator_is_a_usage_error() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
        parse_filter("name")


def test_a_sort_value_with_a_leading_dash_is_kept_as_the_value() -> None:
    argv = ["hub", "ls", "nodes", "--sort", "-created_at", "--json"]
    assert glue_dashed_values(argv) == ["hub", "ls", "nodes", "--sort=-created_at", "--json"]


# -- usage errors: exit 2, one line --------------------------------------------------------


async def test_without_hub_variables_the_cli_exits_2_naming_them() -> None:
    code, out, err = await cli(["ls", "nodes"], environ(None))
    assert (code, out) == (2, "")
    assert len(err.strip().splitlines()) == 1
    assert "FLAME_HUB_CORE_URL" in err


async def test_an_unknown_resource_exits_2() -> None:
    code, _, err = await cli(["ls", "gadgets"], environ(None))
    assert code == 2
    assert "unknown resource 'gadgets'" in err


# -- against the real Hub -------------------------------------------------------------------


async def test_ls_nodes_json_validates_as_a_list_of_nodes(real_hub: HubConnection) -> None:
    code, out, err = await cli(["ls", "nodes", "--json"], environ(real_hub))
    assert code == 0, err
    nodes = pydantic.TypeAdapter(list[Node]).validate_json(out)
    assert 0 < len(nodes) <= 50
    code, out, err = await cli(
        ["ls", "nodes", "--sort", "-created_at", "--limit", "3", "--json"], environ(real_hub)
    )
    assert code == 0, err
    newest = pydantic.TypeAdapter(list[Node]).validate_json(out)
    created = [n.created_at for n in newest]
    assert created == sorted(created, reverse=True)  # type: ignore[type-var]


async def test_get_of_a_missing_node_exits_1_with_one_line(real_hub: HubConnection) -> None:
    code, out, err = await cli(["get", "nodes", MISSING], environ(real_hub))
    assert (code, out) == (1, "")
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "404" in lines[0]
    assert MISSING in lines[0]
    assert real_hub.password not in err


# -- a whole analysis on the emulator: start, status, logs, download ------------------------


@pytest.mark.slow
async def test_analysis_start_status_logs_and_download_on_the_emulator(tmp_path: Path) -> None:
    code_dir = tmp_path / "code"
    (code_dir / "lib").mkdir(parents=True)
    (code_dir / "main.py").write_text("print('hello')\n")
    (code_dir / "lib" / "util.py").write_text("X = 1\n")
    async with HubEmulator(wire_case="camel", auto_buckets=True) as emulator:
        hub = HubConnection.of_emulator(emulator)
        env = environ(hub)
        async with HubClient(
            auth_url=hub.auth_url,
            core_url=hub.core_url,
            storage_url=hub.storage_url,
            credentials=PasswordAuth(hub.user, hub.password),
        ) as api:
            realm = await api.auth.realms.get_by_name("master")
            agg = await api.core.nodes.create(name="cli-agg", realm_id=realm.id, type="aggregator")
            node = await api.core.nodes.create(name="cli-def", realm_id=realm.id, type="default")
            project = await api.core.projects.create(name="cli-project")
            for n in (agg, node):
                await api.core.project_nodes.create(project_id=project.id, node_id=n.id)

            code, out, err = await cli(
                ["analysis", "start", "cli-project", "--nodes", "cli-agg,cli-def",
                 "--code", str(code_dir), "--entrypoint", "main.py", "--name", "cli-analysis",
                 "--master-image", "python/base", "--json"],
                env,
            )  # fmt: skip
            assert code == 0, err
            analysis = Analysis.model_validate_json(out)
            assert analysis.configuration_locked is True
            files = await api.analysis_files(analysis)
            assert sorted((f.name, f.root) for f in files) == [
                ("lib/util.py", False),
                ("main.py", True),
            ]

            code, out, err = await cli(["analysis", "status", str(analysis.id)], env)
            assert code == 0, err
            assert "cli-agg" in out and "cli-def" in out and "locked" in out

            await api.core.analysis_node_logs.create(
                analysis_id=analysis.id, node_id=node.id, level="info", message="step one"
            )
            code, out, err = await cli(["analysis", "logs", str(analysis.id)], env)
            assert code == 0, err
            assert "step one" in out

            result = (
                await api.core.analysis_buckets.find(
                    filter={"analysis_id": analysis.id, "type": "RESULT"}
                )
            ).items[0]
            assert result.external_id is not None
            await api.storage.buckets.upload(
                result.external_id, [UploadFile("result.json", b'{"mean": 4.2}')]
            )
        out_dir = tmp_path / "out"
        code, out, err = await cli(["download", str(analysis.id), "--out", str(out_dir)], env)
        assert code == 0, err
        assert (out_dir / "result.json").read_bytes() == b'{"mean": 4.2}'

        code, out, err = await cli(["ls", "analysis-nodes", "--filter",
                                    f"analysis_id={analysis.id}", "--json"], env)  # fmt: skip
        assert code == 0, err
        members = pydantic.TypeAdapter(list[AnalysisNode]).validate_json(out)
        assert {m.node_id for m in members} == {agg.id, node.id}


async def test_a_hub_refusal_exits_1_and_an_unknown_project_exits_2(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("print(1)\n")
    async with HubEmulator() as emulator:
        env = environ(HubConnection.of_emulator(emulator))
        code, _, err = await cli(
            ["analysis", "start", "no-such-project", "--nodes", "a,b", "--code", str(tmp_path),
             "--entrypoint", "main.py"],
            env,
        )  # fmt: skip
        assert code == 2
        assert "no project is called 'no-such-project'" in err
        code, _, err = await cli(["download", str(uuid.uuid4()), "--out", str(tmp_path)], env)
        assert code == 1
        assert len(err.strip().splitlines()) == 1
        assert "RESULT bucket" in err


async def test_analysis_logs_reads_every_nodes_lines_from_the_real_hub(
    real_hub: HubConnection,
) -> None:
    # the 0.8 line requires both filters and answers a created_at sort with 500 on this resource
    t = f"cli{uuid.uuid4().hex[:8]}"
    async with HubClient(
        auth_url=real_hub.auth_url,
        core_url=real_hub.core_url,
        storage_url=real_hub.storage_url,
        credentials=PasswordAuth(real_hub.user, real_hub.password),
    ) as api:
        realm = await api.auth.realms.get_by_name("master")
        nodes = [
            await api.core.nodes.create(name=f"{t}-{i}", realm_id=realm.id, type="default")
            for i in range(2)
        ]
        project = await api.core.projects.create(name=f"{t}-p")
        for node in nodes:
            await api.core.project_nodes.create(project_id=project.id, node_id=node.id)
        analysis = await api.core.analyses.create(project_id=project.id, name=f"{t}-a")
        for i, node in enumerate(nodes):
            await api.core.analysis_nodes.create(analysis_id=analysis.id, node_id=node.id)
            await api.core.analysis_node_logs.create(
                analysis_id=analysis.id, node_id=node.id, level="info",
                message=f"line from {i}", status="running",
            )  # fmt: skip
        found = await api.core.analysis_node_logs.find_all(
            filter={"analysis_id": analysis.id, "node_id": nodes[0].id}
        )
        assert [line.message for line in found] == ["line from 0"]
    code, out, err = await cli(["analysis", "logs", str(analysis.id)], environ(real_hub))
    assert code == 0, err
    assert "line from 0" in out and "line from 1" in out
    code, out, err = await cli(
        ["analysis", "logs", str(analysis.id), "--node", f"{t}-1"], environ(real_hub)
    )
    assert code == 0, err
    assert "line from 1" in out and "line from 0" not in out
