"""Node processes forked from a server behave as ``python SCRIPT``, and nothing outlives a run.

Each behaviour is checked against a new interpreter started the old way (:class:`SpawnLauncher`):
what the script sees, what it prints, how it ends. Leftover processes are looked up in /proc.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio
import pytest

from flame_async._forkserver import (
    FORKSERVER_ENV,
    ForkServer,
    Launcher,
    SpawnLauncher,
    fork_server_unavailable,
    open_launcher,
)
from flame_async.local import LocalPlatform
from flame_async.runner import NodeOutcome, run_script

pytestmark = pytest.mark.skipif(
    fork_server_unavailable({}) is not None, reason="no fork server on this platform"
)

ANALYSES = Path(__file__).resolve().parents[1] / "cli" / "analyses"


async def run(
    launcher: Launcher, args: Sequence[str], env: Mapping[str, str] | None = None
) -> tuple[int, str, str]:
    """Run ``python ARGS`` to its end: exit code, stdout, stderr."""
    process = await launcher.start(args, env=os.environ if env is None else env)
    output: dict[str, bytes] = {}

    async def read(stream: object, name: str) -> None:
        output[name] = b"".join([chunk async for chunk in stream])  # type: ignore[attr-defined]

    async with anyio.create_task_group() as tg:
        tg.start_soon(read, process.stdout, "stdout")
        tg.start_soon(read, process.stderr, "stderr")
        code = await process.wait()
    await process.aclose()
    return code, output["stdout"].decode(), output["stderr"].decode()


async def both(
    args: Sequence[str], env: Mapping[str, str] | None = None
) -> list[tuple[int, str, str]]:
    """The same command, forked and spawned."""
    async with open_launcher() as launcher:
        assert isinstance(launcher, ForkServer)
        forked = await run(launcher, args, env)
    spawned = await run(SpawnLauncher(), args, env)
    return [forked, spawned]


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (zombies included), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def open_fds() -> set[int]:
    """This process's open file descriptors (less the one that lists them)."""
    listed = {int(fd) for fd in os.listdir("/proc/self/fd")}
    return {fd for fd in listed if Path(f"/proc/self/fd/{fd}").exists()}


WHAT_IT_SEES = """\
import gc, json, os, signal, sys, threading

def annotated(x: int) -> None: ...

fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
print(json.dumps({
    "name": __name__,
    "file": __file__,
    "argv": sys.argv,
    "orig_argv": sys.orig_argv[1:],
    "path0": sys.path[0],
    "main": sys.modules["__main__"].__dict__ is globals(),
    "fds": fds[:-1],  # the last one lists the folder
    "stdin": os.readlink("/proc/self/fd/0"),
    "future": annotated.__annotations__["x"] is int,  # no 'from __future__' of the runner's
    "node": os.environ.get("FLAME_TEST_NODE"),
    "unset": "FLAME_TEST_UNSET" in os.environ,
    "cwd": os.getcwd(),
    "signals": [str(signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGTERM,
                                                   signal.SIGCHLD, signal.SIGPIPE)],
    "wakeup_fd": signal.set_wakeup_fd(-1),
    "threads": threading.active_count(),
    "gc": [gc.isenabled(), gc.get_threshold()],
}))
"""


async def test_a_forked_node_sees_what_python_script_sees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "analysis.py").write_text(WHAT_IT_SEES)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FLAME_TEST_UNSET", "the server's")
    env = {k: v for k, v in os.environ.items() if k != "FLAME_TEST_UNSET"}
    env["FLAME_TEST_NODE"] = "node-1"

    forked, spawned = await both(["sub/analysis.py", "an argument"], env)

    assert forked == spawned
    code, out, err = forked
    assert (code, err) == (0, "")
    seen = json.loads(out)
    assert seen["name"] == "__main__" and seen["main"] and seen["future"]
    assert seen["argv"] == seen["orig_argv"] == ["sub/analysis.py", "an argument"]
    assert seen["file"] == str(tmp_path / "sub" / "analysis.py")
    assert seen["path0"] == str(tmp_path / "sub")
    assert seen["fds"] == [0, 1, 2]
    assert seen["stdin"] == "/dev/null"
    assert (seen["node"], seen["unset"]) == ("node-1", False)
    assert seen["cwd"] == str(tmp_path)
    assert seen["signals"][0] == str(signal.default_int_handler)
    assert (seen["wakeup_fd"], seen["threads"]) == (-1, 1)


ENDINGS = {
    "returns": ("print('done')\n", 0),
    "sys.exit(3)": ("import sys\nsys.exit(3)\n", 3),
    "sys.exit(text)": ("import sys\nsys.exit('bye now')\n", 1),
    "os._exit(7)": ("import os\nos._exit(7)\n", 7),
    "raises": ("def inner():\n    raise ValueError('broken on purpose')\n\ninner()\n", 1),
    "syntax error": ("def broken(:\n    pass\n", 1),
    "killed by SIGTERM": ("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n", -15),
    "atexit runs": ("import atexit\natexit.register(print, 'at exit')\nraise SystemExit(4)\n", 4),
}


@pytest.mark.parametrize("case", list(ENDINGS))
async def test_a_forked_node_ends_as_python_script_does(case: str, tmp_path: Path) -> None:
    source, expected = ENDINGS[case]
    script = tmp_path / "analysis.py"
    script.write_text(source)

    forked, spawned = await both([str(script)])

    assert forked == spawned
    assert forked[0] == expected
    if case == "raises":
        stderr = forked[2]
        assert stderr.startswith("Traceback (most recent call last):\n")
        assert f'File "{script}", line 4, in <module>' in stderr
        assert "flame_async" not in stderr  # only the script's frames
        assert stderr.endswith("ValueError: broken on purpose\n")


async def test_nodes_do_not_share_arguments_or_environment(tmp_path: Path) -> None:
    (tmp_path / "node.py").write_text(
        "import os, sys\n"
        "print(sys.argv[1], os.environ.get('NODE'), os.environ.get('LEAK'))\n"
        "os.environ['LEAK'] = sys.argv[1]\n"
    )
    async with open_launcher() as launcher:
        results: dict[str, tuple[int, str, str]] = {}

        async def node(name: str) -> None:
            results[name] = await run(
                launcher, [str(tmp_path / "node.py"), name], {**os.environ, "NODE": name}
            )

        async with anyio.create_task_group() as tg:
            for name in ("a", "b", "c"):
                tg.start_soon(node, name)
        results["d"] = await run(launcher, [str(tmp_path / "node.py"), "d"], os.environ)
    assert results == {
        "a": (0, "a a None\n", ""),
        "b": (0, "b b None\n", ""),
        "c": (0, "c c None\n", ""),
        "d": (0, "d None None\n", ""),
    }


async def wait_for_line(stream: object) -> str:
    """The first line a process prints (it says it is ready)."""
    data = b""
    async for chunk in stream:  # type: ignore[attr-defined]
        data += chunk
        if b"\n" in data:
            break
    return data.decode().split("\n")[0]


@pytest.mark.parametrize("how", ["terminate", "kill"])
async def test_terminate_and_kill_reach_a_forked_node(how: str, tmp_path: Path) -> None:
    (tmp_path / "stays.py").write_text(
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN if __import__('sys').argv[1] == 'kill'"
        " else signal.SIG_DFL)\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    async with open_launcher() as launcher:
        process = await launcher.start([str(tmp_path / "stays.py"), how], env=os.environ)
        assert await wait_for_line(process.stdout) == "ready"
        getattr(process, how)()
        code = await process.wait()
        await process.aclose()
    assert code == (-signal.SIGTERM if how == "terminate" else -signal.SIGKILL)


async def test_closing_the_launcher_ends_the_server_and_what_still_runs(tmp_path: Path) -> None:
    (tmp_path / "stays.py").write_text("import time\nprint('ready', flush=True)\ntime.sleep(600)\n")
    before, fds = descendants(os.getpid()), open_fds()
    async with open_launcher() as launcher:
        assert isinstance(launcher, ForkServer)
        process = await launcher.start([str(tmp_path / "stays.py")], env=os.environ)
        assert await wait_for_line(process.stdout) == "ready"
        running = descendants(os.getpid()) - before
        assert {launcher.pid, process.pid} <= running
    assert process.returncode == -signal.SIGTERM  # the server stopped it, and said so
    await process.aclose()
    assert not [pid for pid in running if exists(pid)], "a process outlived its launcher"
    assert descendants(os.getpid()) - before == set()
    assert open_fds() == fds  # no pipe or socket left open


async def test_a_cancelled_processes_run_leaves_no_process(tmp_path: Path) -> None:
    """Cancelled while every node waits: nodes and fork server end, and are reaped."""
    before, fds = descendants(os.getpid()), open_fds()
    seen: set[int] = set()

    async def observer(platform: LocalPlatform, outcomes: list[NodeOutcome]) -> None:
        if all(platform.api_port(node) is not None for node in platform.node_ids):
            seen.update(descendants(os.getpid()) - before)
            scope.cancel()

    with anyio.fail_after(60), anyio.CancelScope() as scope:
        await run_script(ANALYSES / "stuck.py", nodes=3, mode="processes", observer=observer)
    assert scope.cancelled_caught
    assert len(seen) >= 4, seen  # the fork server and its three nodes
    assert not [pid for pid in seen if exists(pid)], "a node or the server outlived the run"
    assert descendants(os.getpid()) - before == set()
    assert open_fds() == fds  # no pipe or socket left open


FAILING = """\
import asyncio
from flame_async import FlameSDK

async def main():
    async with FlameSDK() as flame:
        print(f"hello from {flame.node_id}", flush=True)
        if flame.node_id == "node-2":
            raise KeyError("no such thing")
        if flame.node_id == "node-3":
            raise SystemExit(3)

if __name__ == "__main__":
    asyncio.run(main())
"""


@pytest.mark.slow
async def test_a_forked_nodes_failure_names_its_exception_and_its_output_is_kept(
    tmp_path: Path,
) -> None:
    (tmp_path / "analysis.py").write_text(FAILING)
    result = await run_script(tmp_path / "analysis.py", nodes=3, mode="processes", timeout=60)
    node_2, node_3 = result["node-2"], result["node-3"]
    assert node_2.status == "failed"
    assert (node_2.error_type, node_2.error_message) == ("KeyError", "'no such thing'")
    assert node_2.location == "analysis.py:8"
    assert node_2.traceback.startswith("Traceback (most recent call last):")
    assert node_3.status == "failed" and node_3.error_type == "exit code 3"
    for node in ("node-1", "node-2", "node-3"):
        printed = [text for _, stream, text in result[node].output if stream == "stdout"]
        assert printed == [f"hello from {node}"], result[node].output


@pytest.mark.parametrize("value", ["0", "off"])
async def test_the_fork_server_can_be_switched_off(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FORKSERVER_ENV, value)
    async with open_launcher() as launcher:
        assert isinstance(launcher, SpawnLauncher)
        assert (await run(launcher, ["-c", "print('spawned')"]))[:2] == (0, "spawned\n")


async def test_a_server_that_cannot_import_flame_async_falls_back_to_python_script(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "orjson.py").write_text("raise ImportError('broken on purpose')\n")
    broken = {**os.environ, "PYTHONPATH": str(tmp_path)}
    before = descendants(os.getpid())
    with caplog.at_level(logging.WARNING, logger="flame_async.forkserver"):
        async with open_launcher(broken) as launcher:
            assert isinstance(launcher, SpawnLauncher)
            assert (await run(launcher, ["-c", "print('spawned')"]))[:2] == (0, "spawned\n")
    assert "cannot import flame_async: ImportError: broken on purpose" in caplog.text
    assert descendants(os.getpid()) - before == set()
