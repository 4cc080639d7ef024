"""Start an analysis on a FLAME Hub and fetch its results, with ``flame_async.hub``.

What a person who runs an analysis does, as code: log in, create a project with two nodes (an
aggregator and a default node), upload the analysis code and lock its configuration, then
download the result bucket. Run it against a Hub of your own::

    export FLAME_HUB_AUTH_URL=http://127.0.0.1:3010/ FLAME_HUB_CORE_URL=http://127.0.0.1:3020/
    export FLAME_HUB_STORAGE_URL=http://127.0.0.1:3030/
    export FLAME_HUB_USER=admin FLAME_HUB_PASSWORD=start123
    python examples/hub_start_analysis.py --out results/

Nodes only run the analysis on a complete FLAME deployment (registry, nodes, the Hub's
analysis manager). Where nothing executes it, as on a Hub started for tests, the result bucket
does not exist or stays empty, and the script says so instead of waiting forever.
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from flame_async.errors import NotFoundError, RequestTimeout, ServiceError
from flame_async.hub import HubClient, UploadFile

CODE = b"""\
from flame_async import FlameSDK


async def main() -> int:
    async with FlameSDK() as flame:
        return len(flame.get_participants()) + 1  # the nodes taking part
"""

DONE = frozenset({"executed", "finished", "failed", "stopped"})


@dataclass
class Outcome:
    """What the script did (printed at the end; the tests read it)."""

    project_id: str = ""
    analysis_id: str = ""
    node_ids: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    locked: bool | None = None
    lock_error: str | None = None
    execution_status: str | None = None
    results: list[Path] = field(default_factory=list)
    results_note: str = ""


async def main(
    out: Path, *, environ: Mapping[str, str] | None = None, wait: float = 0.0
) -> Outcome:
    """Create the project and the analysis, then download its results into ``out``.

    Args:
        out: Folder for the result bucket's files.
        environ: The ``FLAME_HUB_*`` variables (``os.environ`` when None).
        wait: Seconds to wait for the execution to end before downloading (0: do not wait).
    """
    outcome = Outcome()
    tag = uuid.uuid4().hex[:8]
    async with HubClient.from_env(environ) as hub:
        realm = await hub.auth.realms.get_by_name("master")
        aggregator = await hub.core.nodes.create(
            name=f"example-{tag}-agg", realm_id=realm.id, type="aggregator"
        )
        default = await hub.core.nodes.create(
            name=f"example-{tag}-node", realm_id=realm.id, type="default"
        )
        outcome.node_ids = [str(aggregator.id), str(default.id)]
        project = await hub.core.projects.create(name=f"example-{tag}")
        outcome.project_id = str(project.id)
        for node in (aggregator, default):
            await hub.core.project_nodes.create(project_id=project.id, node_id=node.id)

        # the analysis image: the Hub's master images (a Hub syncs them from a Git repository)
        images = await hub.core.master_images.find(limit=1)
        image_id = images.items[0].id if images.items else None
        files = [UploadFile("main.py", CODE), UploadFile("README.txt", b"an example\n")]
        analysis = await hub.start_analysis(
            project,
            [aggregator, default],
            files,
            entrypoint="main.py",
            name=f"example-{tag}",
            master_image_id=image_id,
            lock=False,
        )
        outcome.analysis_id = str(analysis.id)
        outcome.files = sorted(f.name or "" for f in await hub.analysis_files(analysis))
        if image_id is None:
            outcome.lock_error = "the Hub has no master image: the configuration stays unlocked"
        else:
            try:  # a Hub of the 0.8 line needs RabbitMQ for commands (else: 500)
                analysis = await hub.core.analyses.command(analysis, "configurationLock")
            except ServiceError as exc:
                outcome.lock_error = f"{exc.status} {exc.detail}"
        outcome.locked = analysis.configuration_locked

        if wait > 0:
            try:
                analysis = await hub.core.analyses.wait_for(
                    analysis, lambda a: a.execution_status in DONE, timeout=wait, interval=2.0
                )
            except RequestTimeout:
                outcome.results_note = f"the analysis did not finish within {wait:g} s; "
        outcome.execution_status = analysis.execution_status
        try:
            outcome.results = await hub.download_results(analysis, out)
        except NotFoundError:
            outcome.results_note += (
                "no result bucket: no node has run the analysis (the Hub creates it when the "
                "analysis is built and distributed)"
            )
        else:
            if not outcome.results:
                outcome.results_note += "the result bucket is empty: no node has written to it"
    return outcome


def _cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("hub-results"), help="result folder")
    parser.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the run")
    args = parser.parse_args()
    outcome = anyio.run(lambda: main(args.out, wait=args.wait))
    print(f"project {outcome.project_id} with nodes {', '.join(outcome.node_ids)}")
    print(f"analysis {outcome.analysis_id}: files {', '.join(outcome.files)}")
    print(f"configuration locked: {outcome.locked}" + (
        f" ({outcome.lock_error})" if outcome.lock_error else ""
    ))  # fmt: skip
    print(f"execution status: {outcome.execution_status or 'not started'}")
    for path in outcome.results:
        print(f"result: {path}")
    if outcome.results_note:
        print(outcome.results_note)


if __name__ == "__main__":
    _cli()
