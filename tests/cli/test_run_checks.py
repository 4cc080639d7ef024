"""`flame-async run` checks what it can before anything runs: one line, exit 2, nothing written.

And when the analysis itself fails, the user sees their own error: their line, their frames,
identical failures of many nodes as one; a blocked event loop is named with its line.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "fhir_mean_histogram.py"
DATA = ROOT / "examples" / "data"
ANALYSES = Path(__file__).parent / "analyses"

GOOD = """\
import asyncio
from flame_async import FlameSDK

async def main():
    async with FlameSDK() as flame:
        return flame.node_id

if __name__ == "__main__":
    asyncio.run(main())
"""


def flame_async(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m flame_async ARGS`` (the module form works like the command); checks that
    the command left nothing running behind it."""
    done = subprocess.run(
        [sys.executable, "-m", "flame_async", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
    )
    assert not left_running(cwd), left_running(cwd)
    return done


def left_running(cwd: Path) -> list[str]:
    """The command lines of processes still running in ``cwd`` (nodes, checks)."""
    found = []
    for process in psutil.process_iter(["cwd", "cmdline", "status"]):
        info = process.info
        if info["cwd"] == str(cwd) and info["status"] != psutil.STATUS_ZOMBIE:
            found.append(" ".join(info["cmdline"] or []))
    return found


def assert_refused(done: subprocess.CompletedProcess[str], *expected: str) -> str:
    """Exit 2, one line on stderr naming the problem, nothing started."""
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("flame-async: error: "), lines
    for text in expected:
        assert text in lines[0], lines[0]
    assert "running" not in done.stdout  # nothing was started (or announced)
    return lines[0]


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# -- --out -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["a file", "under a file", "not empty", "an earlier run"])
def test_an_unusable_out_folder_is_refused_before_the_run(tmp_path: Path, case: str) -> None:
    (tmp_path / "analysis.py").write_text(GOOD)
    out = tmp_path / "out"
    expected = {
        "a file": "is a file",
        "under a file": "which is a file",
        "not empty": "not empty and holds no earlier run",
        "an earlier run": "pass --force",
    }[case]
    if case == "a file":
        out.write_text("x")
    elif case == "under a file":
        out.write_text("x")
        out = out / "below"
    elif case == "not empty":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    else:
        out.mkdir()
        (out / "run.json").write_text("{}")
    before = tree(tmp_path)
    done = flame_async("run", "analysis.py", "--nodes", "2", "--out", str(out), cwd=tmp_path)
    assert_refused(done, "--out", expected)
    assert tree(tmp_path) == before  # nothing written anywhere


def test_a_read_only_out_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "analysis.py").write_text(GOOD)
    locked = tmp_path / "locked"
    locked.mkdir()
    command = [sys.executable, "-m", "flame_async", "run", "analysis.py", "--out"]
    if os.geteuid() == 0:
        # root writes into folders without write permission: use a read-only file system,
        # mounted in a mount namespace of the command's own (nothing outside sees it)
        if shutil.which("unshare") is None:
            pytest.skip("running as root without unshare: cannot make a read-only folder")
        script = (
            f"mount -t tmpfs -o ro,size=1m tmpfs {shlex.quote(str(locked))} && exec "
            + " ".join(shlex.quote(a) for a in [*command, str(locked / "out")])
        )
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
    else:
        locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
        argv = [*command, str(locked / "out")]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False
        )
    finally:
        locked.chmod(stat.S_IRWXU)
    if "mount:" in done.stderr:
        pytest.skip(f"cannot mount a read-only file system here: {done.stderr.strip()}")
    assert_refused(done, "not writable")


def test_force_replaces_an_earlier_run_and_only_its_outputs(tmp_path: Path) -> None:
    (tmp_path / "analysis.py").write_text(GOOD)
    out = tmp_path / "out"
    first = flame_async("run", "analysis.py", "--nodes", "2", "--out", str(out), cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    (out / "logs" / "stale.log").write_text("from before")
    (out / "keep.txt").write_text("the user's")
    assert_refused(
        flame_async("run", "analysis.py", "--nodes", "2", "--out", str(out), cwd=tmp_path),
        "holds an earlier run",
    )
    again = flame_async(
        "run", "analysis.py", "--nodes", "2", "--out", str(out), "--force", cwd=tmp_path
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert not (out / "logs" / "stale.log").exists()
    assert (out / "keep.txt").read_text() == "the user's"
    assert (out / "run.json").is_file()


# -- the script ------------------------------------------------------------------------------

SCRIPTS = {
    "syntax error": (
        "import asyncio\n\nasync def main(:\n    pass\n",
        "analysis.py:3: SyntaxError",
    ),
    "import error": (
        "import asyncio\nimport no_such_module_here\n\nasync def main():\n    pass\n",
        "analysis.py:2: ModuleNotFoundError: No module named 'no_such_module_here'",
    ),
    "error at import": (
        "import asyncio\n\nSETTING = {}['missing']\n\nasync def main():\n    pass\n",
        "analysis.py:3: KeyError",
    ),
    "main is not async": (
        "def main():\n    pass\n",
        "must define 'async def main()'",
    ),
    "no main": ("VALUE = 1\n", "must define 'async def main()'"),
}


@pytest.mark.parametrize("mode", ["inprocess", "processes"])
@pytest.mark.parametrize("case", list(SCRIPTS))
def test_a_script_that_cannot_start_is_one_line_naming_its_line(
    tmp_path: Path, case: str, mode: str
) -> None:
    source, expected = SCRIPTS[case]
    (tmp_path / "analysis.py").write_text(source)
    done = flame_async(
        "run", "analysis.py", "--mode", mode, "--out", str(tmp_path / "out"), cwd=tmp_path
    )
    assert_refused(done, expected)
    assert not (tmp_path / "out").exists()


# -- other options ---------------------------------------------------------------------------


def test_a_data_folder_without_node_folders_is_refused(tmp_path: Path) -> None:
    (tmp_path / "analysis.py").write_text(GOOD)
    (tmp_path / "data" / "hospital-a" / "s3").mkdir(parents=True)
    done = flame_async("run", "analysis.py", "--data", "data", cwd=tmp_path)
    assert_refused(done, "has no folder for any node", "node-1", "found hospital-a")


NEEDS_DATA = """\
import asyncio
from flame_async import FlameSDK

async def main():
    async with FlameSDK() as flame:
        return await flame.get_s3_data()

if __name__ == "__main__":
    asyncio.run(main())
"""


def test_a_node_without_data_says_how_to_give_it_some(tmp_path: Path) -> None:
    (tmp_path / "analysis.py").write_text(NEEDS_DATA)
    done = flame_async("run", "analysis.py", "--nodes", "2", "--plain", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "UnknownDataSource" in done.stdout
    assert "no data store is linked to this node" in done.stdout
    assert "'flame-async run ... --data DIR', DIR/<node>/fhir/ and DIR/<node>/s3/" in done.stdout


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf"])
def test_the_timeout_must_be_a_positive_number(tmp_path: Path, value: str) -> None:
    (tmp_path / "analysis.py").write_text(GOOD)
    done = flame_async("run", "analysis.py", "--timeout", value, cwd=tmp_path)
    assert_refused(done, "--timeout")


def test_the_memory_transport_is_refused_for_processes(tmp_path: Path) -> None:
    (tmp_path / "analysis.py").write_text(GOOD)
    done = flame_async(
        "run", "analysis.py", "--mode", "processes", "--transport", "memory", cwd=tmp_path
    )
    assert_refused(done, "memory transport", "--mode inprocess")


def test_run_help_shows_the_defaults(tmp_path: Path) -> None:
    done = flame_async("run", "--help", cwd=tmp_path)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for default in ("(default: 3)", "(default: flame-out)", "(default: 600.0)", "(default: http)"):
        assert default in text, default


# -- the analysis fails ----------------------------------------------------------------------

FAILING = """\
import asyncio
from flame_async import FlameSDK

async def main():
    async with FlameSDK() as flame:
        await asyncio.sleep(0)
        return 1 / 0

if __name__ == "__main__":
    asyncio.run(main())
"""


@pytest.mark.timeout(240)
def test_a_hundred_nodes_failing_alike_read_as_one_failure(tmp_path: Path) -> None:
    (tmp_path / "analysis.py").write_text(FAILING)
    done = flame_async(
        "run",
        "analysis.py",
        "--nodes",
        "100",
        "--transport",
        "memory",
        "--plain",
        "--out",
        str(tmp_path / "out"),
        cwd=tmp_path,
        timeout=220,
    )
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert len(output.splitlines()) < 60, output
    assert "node-1 … node-100 (100 nodes) failed: ZeroDivisionError at analysis.py:7" in output
    assert output.count("Traceback (most recent call last)") == 1
    assert "anyio" not in output and "flame_async/" not in output  # only the user's frames


@pytest.mark.parametrize("mode", ["inprocess", "processes"])
def test_a_blocked_event_loop_is_named_with_its_line(tmp_path: Path, mode: str) -> None:
    """The aggregator sleeps 6 s on its loop. In processes mode the run stops at the timeout,
    while the node still blocks (it began after the run did, so it lasts beyond 4 s), and its
    watchdog reported the block a second after it began; in-process the shared loop is held,
    and the run stops when it is free again."""
    shutil.copy(ANALYSES / "blocker.py", tmp_path / "blocker.py")
    done = flame_async(
        "run",
        "blocker.py",
        "--timeout",
        "4",
        "--mode",
        mode,
        "--plain",
        "--out",
        str(tmp_path / "out"),
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the run was stopped: timeout after 4 s" in done.stdout
    [line] = [ln for ln in done.stdout.splitlines() if ln.startswith("  node-1's event loop")]
    assert "node-1's event loop" in line
    assert "blocker.py:14 (in main)" in line
    assert "asyncio.to_thread" in line
    seconds = float(line.split("blocked for ")[1].split(" s")[0])
    assert seconds >= 1.0  # at least the watchdog threshold
    # one line format while the run lasts: the node's warning once, as [node-1], not twice
    during = (done.stdout + done.stderr).split("\nmessages: ")[0].splitlines()
    assert during[0].startswith("running blocker.py on 3 nodes"), during
    assert all(line.startswith("[node-") for line in during[1:]), during
    assert sum("blocked" in line for line in during[1:]) == 1, during
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    [node] = [n for n in record["nodes"] if n["node_id"] == "node-1"]
    assert any("blocker.py:14 (in main)" in b for b in node["blocked"]), node


# -- chaos mode ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("drop=2", "not a share between 0 and 1"), ("explode=1", "unknown key 'explode'")],
)
def test_a_bad_faults_spec_is_refused(tmp_path: Path, spec: str, expected: str) -> None:
    (tmp_path / "analysis.py").write_text(GOOD)
    done = flame_async("run", "analysis.py", "--faults", spec, cwd=tmp_path)
    assert_refused(done, "--faults", expected)


def test_a_run_under_faults_says_what_it_injected_and_records_the_spec(tmp_path: Path) -> None:
    spec = "drop=0.1,dup=0.3,delay=0-20ms,webhook-5xx=0.2,seed=13"
    done = flame_async(
        "run",
        str(EXAMPLE),
        "--data",
        str(DATA),
        "--faults",
        spec,
        "--plain",
        "--out",
        str(tmp_path / "out"),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["faults"]["spec"] == "seed=13,drop=0.1,dup=0.3,webhook-5xx=0.2,delay=0s-20ms"
    assert sum(record["faults"]["injected"].values()) > 0
    assert f"chaos mode: {record['faults']['spec']}" in done.stdout
    assert "injected: " in done.stdout
