"""A ``HubEmulator`` in a process of its own, for ``hub.py``: the clients measured do not share
its event loop or its core (a Hub is another machine too).

Seeds one project with ``--analyses`` analyses (created without HTTP), then sets the added
latency, prints one JSON line (URLs, credentials, the project's id) and serves until its stdin
closes. Usage::

    python benchmarks/_hub_emulator_server.py --case camel --analyses 10000 --latency 0.02
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import anyio

from flame_async.local import HubEmulator, HubFaults

# fields flame-hub-client 1.x requires on an analysis (current Hubs send them; the 0.8 line,
# which the emulator follows, does not): seeded so that 1.x can read the records at all
CURRENT_HUB_FIELDS: dict[str, Any] = {
    "nodes_approved": 0,
    "configuration_node_aggregator_valid": False,
    "configuration_node_default_valid": False,
    "configuration_entrypoint_valid": False,
    "configuration_image_valid": False,
    "configuration_nodes_valid": False,
    "distribution_nodes_valid": False,
    "build_progress": None,
    "build_hash": None,
    "build_os": None,
    "build_size": None,
    "distribution_status": None,
    "distribution_progress": None,
    "execution_status": None,
    "execution_progress": None,
    "client_id": None,
}


async def main(args: argparse.Namespace) -> None:
    async with HubEmulator(
        wire_case=args.case,
        access_token_lifetime=args.access_lifetime,
        refresh_token_lifetime=max(args.access_lifetime * 4, 60.0),
    ) as emulator:
        project = emulator.add("projects", name="bench-project", display_name="bench project")
        for i in range(args.analyses):
            emulator.add(
                "analyses",
                project_id=project["id"],
                name=f"bench-{i:05d}",
                display_name=f"bench {i}",
                **CURRENT_HUB_FIELDS,
            )
        emulator.faults = HubFaults(latency=args.latency)
        print(
            json.dumps(
                {
                    "auth_url": emulator.auth_url,
                    "core_url": emulator.core_url,
                    "storage_url": emulator.storage_url,
                    "user": emulator.admin_user,
                    "password": emulator.admin_password,
                    "project_id": project["id"],
                    "wire_case": emulator.wire_case,
                }
            ),
            flush=True,
        )
        # serve until the parent closes our stdin
        await anyio.to_thread.run_sync(sys.stdin.read)
        grants = dict(emulator.token_grants)
        print(json.dumps({"token_grants": grants}), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", choices=("snake", "camel"), default="camel")
    parser.add_argument("--analyses", type=int, default=10_000)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--access-lifetime", type=float, default=3600.0)
    anyio.run(main, parser.parse_args())
