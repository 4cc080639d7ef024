"""The Hub client's speed: listing, tokens and transfers, each against an in-run floor.

Four parts (issue 11, "Benchmark"); every figure is also given as a ratio to a floor measured
in the same run, because absolute times on 2 shared cores are noisy:

1. **Real Hub, loopback** (authup + core + storage 0.8.14 started by
   ``tests/hub/real_hub/start_real_hub.sh``; URLs from ``FLAME_HUB_*`` or the script's ``env``):
   2,000 analyses of one project. Our ``find_all()`` with relations off and on, ``flame_hub``
   0.2.0 (the release that reads this Hub; a cached venv) paging the same records in a loop, and
   raw aiohttp sequential GETs (the floor).
2. **Emulator with 20 ms added per request** (a separate process, camelCase, 10,000 analyses):
   our ``find_all()`` with concurrency 1, 4 and 8 vs ``flame_hub`` 1.1 paging (the current
   release, camelCase only) vs raw aiohttp with 8 requests in flight (the floor).
3. **Tokens**: waves of 1,000 concurrent ``get`` calls for 30 s against an emulator issuing
   5-s access tokens: token requests, failures, wall time.
4. **Transfers**: upload and download of a 256 MiB file to the real Hub's storage, ours vs raw
   aiohttp streaming, MiB/s and the peak RSS growth of this process.

Usage::

    python benchmarks/hub.py --json benchmarks/results/hub.json [--quick] [--parts 1,2,3,4]

Not run by the tests. ``--quick`` shrinks every part (for trying the script).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flame_async.config import RetryPolicy  # noqa: E402
from flame_async.hub import HubClient, PasswordAuth, UploadFile  # noqa: E402


def flame_hub_python(version: str) -> Path:
    """The interpreter of the cached venv with ``flame-hub-client==version`` (built by pip
    once per machine, as the tests' venvs are, in ``$FLAME_ASYNC_TEST_CACHE``)."""
    from tests.hub._venvs import prepare_flame_hub_venv

    venv = prepare_flame_hub_venv(version)
    if venv.python is None:
        raise RuntimeError(f"no flame-hub-client {version}: {venv.skip_reason}")
    return venv.python


SCRIPT = ROOT / "tests" / "hub" / "real_hub" / "start_real_hub.sh"
EMULATOR = Path(__file__).resolve().parent / "_hub_emulator_server.py"
RELATIONS = ["registry", "project", "master_image"]
"""What ``flame_hub`` always joins on analyses (0.2.0 and 1.1 alike)."""
BENCH_PROJECT = "bench-hub-analyses"
MiB = 1 << 20

# -- helpers ---------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def repeat(fn: Callable[[], Awaitable[Any]], times: int) -> tuple[list[float], Any]:
    """Run ``fn`` ``times`` times; the seconds of each run and the last result."""
    seconds: list[float] = []
    result: Any = None
    for _ in range(times):
        began = time.perf_counter()
        result = await fn()
        seconds.append(time.perf_counter() - began)
    return seconds, result


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.asynccontextmanager
async def peak_rss() -> AsyncIterator[dict[str, float]]:
    """Samples this process' RSS every 10 ms; ``growth_mib`` = peak - start."""
    found = {"start_mib": rss_mib(), "peak_mib": rss_mib()}

    async def sample() -> None:
        while True:
            found["peak_mib"] = max(found["peak_mib"], rss_mib())
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        tg.start_soon(sample)
        try:
            yield found
        finally:
            found["peak_mib"] = max(found["peak_mib"], rss_mib())
            found["growth_mib"] = found["peak_mib"] - found["start_mib"]
            tg.cancel_scope.cancel()


def real_hub_env() -> dict[str, str]:
    if os.environ.get("FLAME_HUB_CORE_URL"):
        return {k: v for k, v in os.environ.items() if k.startswith("FLAME_HUB_")}
    done = subprocess.run(
        ["bash", str(SCRIPT), "env"], capture_output=True, text=True, check=False, timeout=60
    )
    if done.returncode != 0:
        raise RuntimeError(f"no real Hub: run `{SCRIPT} start` (or export FLAME_HUB_*)")
    return dict(
        line.split("=", 1) for line in done.stdout.splitlines() if line.startswith("FLAME_HUB_")
    )


def client_of(env: dict[str, str], **options: Any) -> HubClient:
    options.setdefault("retry", RetryPolicy(attempts=6, initial=0.2, jitter=1.0, deadline=120))
    return HubClient(
        auth_url=env["FLAME_HUB_AUTH_URL"],
        core_url=env["FLAME_HUB_CORE_URL"],
        storage_url=env["FLAME_HUB_STORAGE_URL"],
        credentials=PasswordAuth(env["FLAME_HUB_USER"], env["FLAME_HUB_PASSWORD"]),
        **options,
    )


class Raw:
    """Plain aiohttp: one token, GETs of pages, orjson, no validation: the floor."""

    def __init__(self, env: dict[str, str], session: aiohttp.ClientSession, case: str) -> None:
        self.env, self.session, self.case = env, session, case
        self.headers: dict[str, str] = {}

    async def login(self) -> None:
        async with self.session.post(
            self.env["FLAME_HUB_AUTH_URL"].rstrip("/") + "/token",
            json={
                "grant_type": "password",
                "username": self.env["FLAME_HUB_USER"],
                "password": self.env["FLAME_HUB_PASSWORD"],
            },
        ) as response:
            body = await response.read()
        self.headers = {"authorization": f"Bearer {orjson.loads(body)['access_token']}"}

    def params(self, project_id: str, offset: int, include: bool) -> dict[str, str]:
        camel = self.case == "camel"
        params = {
            "page[limit]": "50",
            "page[offset]": str(offset),
            "sort": "createdAt" if camel else "created_at",
            f"filter[{'projectId' if camel else 'project_id'}]": project_id,
        }
        if include:
            params["include"] = ",".join(
                "masterImage" if camel and r == "master_image" else r for r in RELATIONS
            )
        return params

    async def page(self, project_id: str, offset: int, include: bool) -> dict[str, Any]:
        url = self.env["FLAME_HUB_CORE_URL"].rstrip("/") + "/analyses"
        async with self.session.get(
            url, params=self.params(project_id, offset, include), headers=self.headers
        ) as response:
            response.raise_for_status()
            answer: dict[str, Any] = orjson.loads(await response.read())
            return answer

    async def all_sequential(self, project_id: str, include: bool = False) -> int:
        first = await self.page(project_id, 0, include)
        records = len(first["data"])
        for offset in range(50, first["meta"]["total"], 50):
            records += len((await self.page(project_id, offset, include))["data"])
        return records

    async def all_concurrent(self, project_id: str, in_flight: int, include: bool = False) -> int:
        first = await self.page(project_id, 0, include)
        counts = [len(first["data"])]
        limiter = asyncio.Semaphore(in_flight)

        async def one(offset: int) -> None:
            async with limiter:
                counts.append(len((await self.page(project_id, offset, include))["data"]))

        await asyncio.gather(*(one(o) for o in range(50, first["meta"]["total"], 50)))
        return sum(counts)


# flame_hub runs in its own venv (it is synchronous, httpx); it prints one JSON line
_FLAME_HUB_PAGING = r"""
import json, os, sys, time
import flame_hub
if os.environ.get("PATCH_META") == "1":
    # flame-hub-client 1.x requires meta.schema on every list, which current Hubs send and the
    # 0.8 line (and so the emulator) does not; an optional one changes nothing measured
    import typing as t
    from pydantic import BaseModel
    from flame_hub import _base_client as b
    class ResourceListMeta(BaseModel):
        total: int
        limit: int
        offset: int
    class ResourceList(BaseModel, t.Generic[b.ResourceT]):
        data: list[b.ResourceT]
        meta: ResourceListMeta
    b.ResourceList = ResourceList
auth = flame_hub.auth.PasswordAuth(
    os.environ["HUB_USER"], os.environ["HUB_PASSWORD"], base_url=os.environ["HUB_AUTH_URL"]
)
core = flame_hub.CoreClient(base_url=os.environ["HUB_CORE_URL"], auth=auth)
pid = os.environ["HUB_PROJECT"]
core.find_analyses(filter={"project_id": pid}, page={"limit": 1, "offset": 0})  # log in
seconds, count = [], 0
for _ in range(int(os.environ["REPEATS"])):
    began = time.perf_counter()
    records, offset = [], 0
    while True:
        page = core.find_analyses(
            filter={"project_id": pid}, page={"limit": 50, "offset": offset},
            sort={"by": "created_at", "order": "ascending"},
        )
        records += page
        offset += 50
        if len(page) < 50:
            break
    seconds.append(time.perf_counter() - began)
    count = len(records)
print(json.dumps({"seconds": seconds, "records": count}))
"""


async def flame_hub_paging(
    python: Path, env: dict[str, str], project_id: str, repeats: int, *, patch_meta: bool
) -> dict[str, Any]:
    child_env = {
        **os.environ,
        "HUB_USER": env["FLAME_HUB_USER"],
        "HUB_PASSWORD": env["FLAME_HUB_PASSWORD"],
        "HUB_AUTH_URL": env["FLAME_HUB_AUTH_URL"],
        "HUB_CORE_URL": env["FLAME_HUB_CORE_URL"],
        "HUB_PROJECT": project_id,
        "REPEATS": str(repeats),
        "PATCH_META": "1" if patch_meta else "0",
    }
    done = await anyio.run_process(
        [str(python), "-c", _FLAME_HUB_PAGING], env=child_env, check=False
    )
    if done.returncode != 0:
        return {"failed": done.stderr.decode()[-600:]}
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def summary(seconds: list[float], records: int) -> dict[str, Any]:
    return {
        "seconds": [round(s, 4) for s in seconds],
        "median_s": round(median(seconds), 4),
        "records": records,
    }


def ratio(floor: dict[str, Any], other: dict[str, Any]) -> float | None:
    """How fast ``other`` is relative to ``floor``: floor time / other time (higher = faster)."""
    a, b = floor.get("median_s"), other.get("median_s")
    if not a or not b:
        return None
    return round(float(a) / float(b), 3)


# -- part 1: the real Hub --------------------------------------------------------------------


async def ensure_analyses(hub: HubClient, count: int) -> str:
    """The id of the project holding ``count`` benchmark analyses (created once, reused)."""
    found = await hub.core.projects.find(filter={"name": BENCH_PROJECT}, limit=1)
    project = found.items[0] if found.items else await hub.core.projects.create(name=BENCH_PROJECT)
    have = (await hub.core.analyses.find(filter={"project_id": project.id}, limit=1)).total
    missing = count - have
    if missing > 0:
        print(f"  creating {missing} analyses in {BENCH_PROJECT} (once) ...", flush=True)
        limiter = anyio.Semaphore(8)

        async def make(i: int) -> None:
            async with limiter:
                await hub.core.analyses.create(project_id=project.id, name=f"bench-{i:05d}")

        async with anyio.create_task_group() as tg:
            for i in range(have, count):
                tg.start_soon(make, i)
    return str(project.id)


async def part_real_hub(count: int, repeats: int) -> dict[str, Any]:
    env = real_hub_env()
    out: dict[str, Any] = {"records_wanted": count, "repeats": repeats}
    async with client_of(env) as hub:
        if count < 2000:  # --quick: a project of its own size
            global BENCH_PROJECT  # noqa: PLW0603 - one switch for the quick run
            BENCH_PROJECT = f"bench-hub-analyses-{count}"
        pid = await ensure_analyses(hub, count)
        await hub.core.analyses.find(limit=1)  # token and casing before timing
        for name, kwargs in (
            ("ours_relations_off", {}),
            ("ours_relations_off_c1", {"concurrency": 1}),
            ("ours_relations_on", {"include": RELATIONS}),
        ):
            seconds, items = await repeat(
                lambda kw=kwargs: hub.core.analyses.find_all(  # type: ignore[misc]
                    filter={"project_id": pid}, **kw
                ),
                repeats,
            )
            out[name] = summary(seconds, len(items))
    async with aiohttp.ClientSession() as session:
        raw = Raw(env, session, env.get("FLAME_HUB_WIRE_CASE", "snake"))
        await raw.login()
        for name, include in (("raw_sequential", False), ("raw_sequential_relations_on", True)):
            seconds, n = await repeat(lambda inc=include: raw.all_sequential(pid, inc), repeats)  # type: ignore[misc]
            out[name] = summary(seconds, n)
    python = await anyio.to_thread.run_sync(flame_hub_python, "0.2.0")
    fh = await flame_hub_paging(python, env, pid, repeats, patch_meta=False)
    out["flame_hub_0_2_0"] = summary(fh["seconds"], fh["records"]) if "seconds" in fh else fh
    out["ratios"] = {
        "ours_on_vs_flame_hub (target >= 1.5)": ratio(
            out["flame_hub_0_2_0"], out["ours_relations_on"]
        ),
        "ours_off_vs_raw_floor (target >= 0.7)": ratio(
            out["raw_sequential"], out["ours_relations_off"]
        ),
        "ours_on_vs_raw_relations_on": ratio(
            out["raw_sequential_relations_on"], out["ours_relations_on"]
        ),
        "ours_off_vs_flame_hub (ours without the joins)": ratio(
            out["flame_hub_0_2_0"], out["ours_relations_off"]
        ),
    }
    return out


# -- emulator in a child process --------------------------------------------------------------


@contextlib.asynccontextmanager
async def emulator_process(
    *, analyses: int, latency: float, case: str = "camel", access_lifetime: float = 3600.0
) -> AsyncIterator[tuple[dict[str, str], str, dict[str, Any]]]:
    """An emulator in its own process; yields (FLAME_HUB_* env, project id, its final report)."""
    child_env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = await anyio.open_process(
        [sys.executable, str(EMULATOR), "--case", case, "--analyses", str(analyses),
         "--latency", str(latency), "--access-lifetime", str(access_lifetime)],
        env=child_env,
    )  # fmt: skip
    report: dict[str, Any] = {}
    try:
        assert process.stdout is not None
        assert process.stdin is not None
        buffered = b""
        async for chunk in process.stdout:
            buffered += chunk
            if b"\n" in buffered:
                break
        line, _, rest = buffered.partition(b"\n")
        info = json.loads(line)
        env = {
            "FLAME_HUB_AUTH_URL": info["auth_url"],
            "FLAME_HUB_CORE_URL": info["core_url"],
            "FLAME_HUB_STORAGE_URL": info["storage_url"],
            "FLAME_HUB_USER": info["user"],
            "FLAME_HUB_PASSWORD": info["password"],
            "FLAME_HUB_WIRE_CASE": info["wire_case"],
        }
        yield env, info["project_id"], report
        await process.stdin.aclose()
        tail = rest + b"".join([c async for c in process.stdout])
        if tail.strip():
            report.update(json.loads(tail.strip().splitlines()[-1]))
    finally:
        with anyio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()


async def part_emulator(count: int, repeats: int, latency: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "records": count, "latency_s": latency, "wire_case": "camel", "repeats": repeats,
    }  # fmt: skip
    async with emulator_process(analyses=count, latency=latency) as (env, pid, _):
        async with client_of(env, max_concurrency=8, wire_case="auto") as hub:
            await hub.core.analyses.find(limit=1)
            for c in (1, 4, 8):
                seconds, items = await repeat(
                    lambda c=c: hub.core.analyses.find_all(  # type: ignore[misc]
                        filter={"project_id": pid}, concurrency=c
                    ),
                    repeats,
                )
                out[f"ours_c{c}"] = summary(seconds, len(items))
            seconds, items = await repeat(
                lambda: hub.core.analyses.find_all(
                    filter={"project_id": pid}, concurrency=8, include=RELATIONS
                ),
                repeats,
            )
            out["ours_c8_relations_on"] = summary(seconds, len(items))
        async with aiohttp.ClientSession() as session:
            raw = Raw(env, session, "camel")
            await raw.login()
            seconds, n = await repeat(lambda: raw.all_concurrent(pid, 8), repeats)
            out["raw_c8"] = summary(seconds, n)
            seconds, n = await repeat(lambda: raw.all_concurrent(pid, 8, include=True), repeats)
            out["raw_c8_relations_on"] = summary(seconds, n)
            seconds, n = await repeat(lambda: raw.all_sequential(pid), repeats)
            out["raw_sequential"] = summary(seconds, n)
        python = await anyio.to_thread.run_sync(flame_hub_python, "1.1.0")
        fh = await flame_hub_paging(python, env, pid, max(1, repeats - 1), patch_meta=True)
        out["flame_hub_1_1_0"] = summary(fh["seconds"], fh["records"]) if "seconds" in fh else fh
    out["ratios"] = {
        "ours_c8_on_vs_flame_hub (same relations, target >= 5)": ratio(
            out["flame_hub_1_1_0"], out["ours_c8_relations_on"]
        ),
        "ours_c8_vs_flame_hub (ours without the joins)": ratio(
            out["flame_hub_1_1_0"], out["ours_c8"]
        ),
        "ours_c8_vs_raw_c8 (target >= 0.8)": ratio(out["raw_c8"], out["ours_c8"]),
        "ours_c8_on_vs_raw_c8_on": ratio(out["raw_c8_relations_on"], out["ours_c8_relations_on"]),
        "ours_c1_vs_raw_c8": ratio(out["raw_c8"], out["ours_c1"]),
        "ours_c4_vs_raw_c8": ratio(out["raw_c8"], out["ours_c4"]),
    }
    return out


# -- part 3: tokens ---------------------------------------------------------------------------


async def part_tokens(duration: float, wave: int, lifetime: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "duration_s": duration,
        "wave": wave,
        "access_token_lifetime_s": lifetime,
    }
    emulator = emulator_process(analyses=50, latency=0.0, access_lifetime=lifetime)
    async with emulator as (env, _, report), client_of(env, max_concurrency=8) as hub:
        ids = [a.id for a in (await hub.core.analyses.find(limit=50)).items]
        failures: list[str] = []
        gets = waves = 0

        async def one(i: int) -> None:
            nonlocal gets
            try:
                await hub.core.analyses.get(ids[i % len(ids)])
                gets += 1
            except Exception as exc:  # noqa: BLE001 - counted, the benchmark's figure
                failures.append(repr(exc))

        began = time.perf_counter()
        while time.perf_counter() - began < duration:
            async with anyio.create_task_group() as tg:
                for i in range(wave):
                    tg.start_soon(one, i)
            waves += 1
        wall = time.perf_counter() - began
        out |= {
            "wall_s": round(wall, 2),
            "waves": waves,
            "gets": gets,
            "failed": len(failures),
            "first_failures": failures[:3],
            "client_token_requests": dict(hub.tokens.grants),
        }
    out["server_token_grants"] = report.get("token_grants")
    refreshes = out["client_token_requests"].get("refresh_token", 0)
    out["refreshes_per_lifetime"] = round(refreshes / (out["wall_s"] / lifetime), 2)
    return out


# -- part 4: transfers ------------------------------------------------------------------------


def rate(size_mib: int, seconds: float, rss: dict[str, float]) -> dict[str, Any]:
    return {
        "mib_s": round(size_mib / seconds, 1),
        "seconds": round(seconds, 2),
        "rss_growth_mib": round(rss["growth_mib"], 1),
    }


async def part_transfers(env: dict[str, str], size_mib: int, repeats: int = 3) -> dict[str, Any]:
    """Uploads once each; downloads (to a file) and stream reads (no disk) ``repeats`` times,
    ours and raw alternating, medians (writing to the disk is the noisiest part)."""
    out: dict[str, Any] = {"size_mib": size_mib, "download_repeats": repeats}
    with tempfile.TemporaryDirectory(prefix="flame-hub-bench-") as tmp:
        source = Path(tmp) / "big.bin"
        with source.open("wb") as f:
            block = os.urandom(MiB)
            for _ in range(size_mib):
                f.write(block)
        async with client_of(env) as hub:
            await hub.core.nodes.find(limit=1)
            bucket = await hub.storage.buckets.create(name=f"bench-{time.time_ns()}")
            async with peak_rss() as rss:
                began = time.perf_counter()
                files = await hub.storage.buckets.upload(bucket, [UploadFile("big.bin", source)])
                seconds = time.perf_counter() - began
            out["ours_upload"] = rate(size_mib, seconds, rss)
            token = await hub.tokens.token()  # the same token for the raw calls
            raw_bucket = await hub.storage.buckets.create(name=f"bench-raw-{time.time_ns()}")
            storage = env["FLAME_HUB_STORAGE_URL"].rstrip("/")
            headers = {"authorization": f"Bearer {token}"}
            timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with peak_rss() as rss:
                    began = time.perf_counter()
                    with source.open("rb") as upload:
                        form = aiohttp.FormData()
                        form.add_field("file", upload, filename="big.bin")
                        async with session.post(
                            f"{storage}/buckets/{raw_bucket.id}/upload", data=form, headers=headers
                        ) as response:
                            response.raise_for_status()
                            answer = orjson.loads(await response.read())
                    seconds = time.perf_counter() - began
                out["raw_upload"] = rate(size_mib, seconds, rss)
                file_id = answer["data"][0]["id"]
                target = Path(tmp) / "copy.bin"

                async def ours_download() -> None:
                    await hub.storage.bucket_files.download(files[0], target)

                async def ours_stream() -> None:
                    async for _ in hub.storage.bucket_files.stream(files[0]):
                        pass

                async def raw_read(write: bool) -> None:
                    async with session.get(
                        f"{storage}/bucket-files/{file_id}/stream", headers=headers
                    ) as response:
                        response.raise_for_status()
                        with target.open("wb") if write else contextlib.nullcontext() as f:
                            async for chunk in response.content.iter_chunked(MiB):
                                if f is not None:
                                    f.write(chunk)

                runs: dict[str, list[float]] = {}
                growth: dict[str, float] = {}
                for _ in range(repeats):
                    for name, call in (
                        ("ours_download", ours_download),
                        ("raw_download", lambda: raw_read(True)),
                        ("ours_stream", ours_stream),
                        ("raw_stream", lambda: raw_read(False)),
                    ):
                        async with peak_rss() as rss:
                            began = time.perf_counter()
                            await call()
                            runs.setdefault(name, []).append(time.perf_counter() - began)
                        growth[name] = max(growth.get(name, 0.0), rss["growth_mib"])
                for name, seconds_list in runs.items():
                    out[name] = rate(size_mib, median(seconds_list), {"growth_mib": growth[name]})
                    out[name]["mib_s_each"] = [round(size_mib / x, 1) for x in seconds_list]
            await hub.storage.bucket_files.delete(files[0])
            await hub.storage.bucket_files.delete(file_id)
            for b in (bucket, raw_bucket):
                await hub.storage.buckets.delete(b)
    out["ratios"] = {
        f"ours_{kind}_vs_raw": round(out[f"ours_{kind}"]["mib_s"] / out[f"raw_{kind}"]["mib_s"], 3)
        for kind in ("upload", "download", "stream")
    }
    return out


async def transfers(size_mib: int) -> dict[str, Any]:
    """The real Hub's storage up to 64 MiB (above, its MinIO client's multipart completion fails
    against the test Hub's moto S3: 500), and the emulator's storage (a separate process, files
    on disk) at ``size_mib``."""
    out: dict[str, Any] = {}
    real_size = min(size_mib, 64)
    try:
        out[f"real_hub_{real_size}_mib"] = await part_transfers(real_hub_env(), real_size)
    except Exception as exc:  # noqa: BLE001 - reported in the results
        out[f"real_hub_{real_size}_mib"] = {"failed": repr(exc)[:500]}
    async with emulator_process(analyses=0, latency=0.0) as (env, _, _):
        out[f"emulator_{size_mib}_mib"] = await part_transfers(env, size_mib)
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    parts = {int(p) for p in args.parts.split(",")}
    quick = args.quick
    result: dict[str, Any] = {
        "benchmark": "hub",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "quick": quick,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    steps: list[tuple[int, str, Callable[[], Awaitable[dict[str, Any]]]]] = [
        (1, "real_hub", lambda: part_real_hub(200 if quick else 2000, 2 if quick else 5)),
        (2, "emulator", lambda: part_emulator(1000 if quick else 10_000, 2 if quick else 3, 0.02)),
        # the same with 2,000 records: the emulator filters and sorts a listing once per change
        # and slices it per page, so the record count should barely matter (runs 1-3, before
        # that cache, paid about 17 ms of its CPU per page at 10,000)
        (
            2,
            "emulator_2000",
            lambda: part_emulator(200 if quick else 2000, 2 if quick else 3, 0.02),
        ),
        (3, "tokens", lambda: part_tokens(8.0 if quick else 30.0, 1000, 5.0)),
        (4, "transfers", lambda: transfers(16 if quick else 256)),
    ]
    for number, name, step in steps:
        if number not in parts:
            continue
        print(f"part {number}: {name} ...", flush=True)
        try:
            result[name] = await step()
        except Exception as exc:  # noqa: BLE001 - one part failing keeps the others
            result[name] = {"failed": repr(exc)[:800]}
        if args.json:  # written after each part: a late failure loses nothing
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="small sizes, to try the script")
    parser.add_argument("--parts", default="1,2,3,4", help="which parts, e.g. 1,2")
    args = parser.parse_args()
    result = anyio.run(run, args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
