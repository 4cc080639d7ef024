"""No token the platform minted, and no Kong apikey, ends up in what a run leaves behind.

A real analysis runs with an out dir; then the node logs, ``run.json``, ``report.html``, the
final results and the pod orchestrator's log store are searched for every node token (the ones
in the nodes' environments and every refresh the PO handed out), every ``DATA_SOURCE_TOKEN``,
and any string shaped like one of the platform's JWTs at all (they all start with the same
header segment), so a token minted and shown without being seen here is found too.
"""

from __future__ import annotations

import base64
import textwrap
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest

from flame_async.local import LocalPlatform
from flame_async.runner import NodeOutcome, run_script

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "fhir_mean_histogram.py"
EXAMPLE_DATA = ROOT / "examples" / "data"
JWT_HEADER = base64.urlsafe_b64encode(orjson.dumps({"alg": "HS256", "typ": "JWT"})).rstrip(b"=")

FAILING = textwrap.dedent(
    '''
    """Logs its configuration, then fails on node-2 with it in the error."""

    import asyncio
    import logging

    from flame_async import FlameSDK


    async def main() -> None:
        async with FlameSDK() as flame:
            logging.getLogger("analysis").warning("my configuration: %r", flame.config)
            flame.flame_log(f"config {flame.config}")
            if flame.node_id == "node-2":
                raise RuntimeError(f"failing on purpose, configured as {flame.config!r}")
            if flame.is_aggregator:
                await flame.send_result({"ok": True}, filename="ok.json")


    if __name__ == "__main__":
        asyncio.run(main())
    '''
)


class Secrets:
    """What the observer saw of the platform while the run went on."""

    def __init__(self) -> None:
        self.tokens: set[str] = set()
        self.apikeys: set[str] = set()
        self.po_logs: list[str] = []

    async def observe(self, platform: LocalPlatform, outcomes: Sequence[NodeOutcome]) -> None:
        for node in platform.nodes:
            self.tokens.add(node.env["KEYCLOAK_TOKEN"])
            self.tokens.add(platform.token(node.node_id))  # the last refresh, if any
            self.apikeys.add(node.env["DATA_SOURCE_TOKEN"])
        # the last call comes after every node ended: the PO's store as the run left it
        self.po_logs = [r.log for node in platform.nodes for r in platform.logs(node.node_id)]

    def found_in(self, name: str, text: bytes) -> list[str]:
        found = [f"{name}: a node token" for token in self.tokens if token.encode() in text]
        found += [
            f"{name}: a token signature"
            for t in self.tokens
            if t.rsplit(".", 1)[1].encode() in text
        ]
        found += [f"{name}: a Kong apikey" for key in self.apikeys if key.encode() in text]
        if JWT_HEADER in text:
            found.append(f"{name}: something shaped like a platform JWT")
        return found


def leaks(out: Path, secrets: Secrets) -> list[str]:
    files = sorted(p for p in out.rglob("*") if p.is_file())
    names = {p.relative_to(out).as_posix() for p in files}
    assert {"run.json", "report.html"} <= names
    assert any(n.startswith("logs/") for n in names)
    found: list[str] = []
    for path in files:
        found += secrets.found_in(path.relative_to(out).as_posix(), path.read_bytes())
    found += secrets.found_in("the PO's log store", "\n".join(secrets.po_logs).encode())
    return found


@pytest.mark.parametrize(
    ("mode", "transport"),
    [("processes", "http"), ("inprocess", "http"), ("inprocess", "memory")],
)
async def test_a_runs_outputs_hold_no_token_or_apikey(
    tmp_path: Path, mode: str, transport: str
) -> None:
    secrets = Secrets()
    out = tmp_path / "out"
    result = await run_script(
        EXAMPLE,
        mode=mode,  # type: ignore[arg-type]
        transport=transport,  # type: ignore[arg-type]
        nodes=3,
        data=EXAMPLE_DATA,
        out_dir=out,
        timeout=60,
        observer=secrets.observe,
        state_dir=tmp_path / "state",
    )
    assert result.ok, [o.traceback for o in result.root_causes]
    assert len(secrets.tokens) >= 3 and len(secrets.apikeys) == 3
    assert secrets.po_logs, "the nodes shipped logs to the PO"
    assert leaks(out, secrets) == []


async def test_a_failing_run_that_logs_its_configuration_leaks_no_secret(tmp_path: Path) -> None:
    script = tmp_path / "failing.py"
    script.write_text(FAILING)
    secrets = Secrets()
    out = tmp_path / "out"
    result = await run_script(
        script,
        mode="processes",
        nodes=3,
        out_dir=out,
        timeout=60,
        fail_fast_grace=0.5,
        observer=secrets.observe,
        state_dir=tmp_path / "state",
    )
    assert not result.ok
    assert [o.node_id for o in result.root_causes] == ["node-2"]
    assert "failing on purpose" in (out / "run.json").read_text()
    assert leaks(out, secrets) == []
