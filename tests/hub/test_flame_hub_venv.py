"""The comparison venv works: PyPI ``flame-hub-client`` 0.2.0 reads the real Hub's nodes.

The benchmark and the client tests compare our client with ``flame_hub``; this pins that the
cached venv (``tests/hub/_venvs.py``) exists and that this release can read the pinned Hub's
nodes (later releases fail validation on them), and that it reads what the wire says.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import aiohttp
import anyio
import orjson
import pytest

from ._backends import HubConnection
from ._raw import RawHub

_LIST_NODES = """
import json, os, flame_hub
auth = flame_hub.auth.PasswordAuth(
    os.environ["HUB_USER"], os.environ["HUB_PASSWORD"], base_url=os.environ["HUB_AUTH_URL"]
)
core = flame_hub.CoreClient(base_url=os.environ["HUB_CORE_URL"], auth=auth)
print(json.dumps([{"id": str(n.id), "name": n.name} for n in core.get_nodes()]))
"""


@pytest.mark.real_hub
async def test_flame_hub_0_2_0_lists_the_real_hubs_nodes(
    real_hub: HubConnection, flame_hub_python: Path
) -> None:
    async with aiohttp.ClientSession() as session:
        raw = RawHub(real_hub, session)
        realm = await raw.master_realm_id()
        await raw.create(
            "core", "nodes", {"name": f"venv-{uuid.uuid4().hex[:12]}", "realm_id": realm}
        )
        everything: dict[str, str] = {}
        total = 1
        while len(everything) < total:
            page = await raw.call(
                "GET",
                "core",
                "nodes",
                params={
                    "page[limit]": "50",
                    "page[offset]": str(len(everything)),
                    "sort": "created_at",
                },
            )
            total = page.json["meta"]["total"]
            everything.update((n["id"], n["name"]) for n in page.json["data"])
    env = {
        **os.environ,
        "HUB_USER": real_hub.user,
        "HUB_PASSWORD": real_hub.password,
        "HUB_AUTH_URL": real_hub.auth_url,
        "HUB_CORE_URL": real_hub.core_url,
    }
    done = await anyio.run_process([str(flame_hub_python), "-c", _LIST_NODES], env=env)
    nodes = orjson.loads(done.stdout)
    # flame_hub 0.2.0 reads the first page only (50 records, in the server's order)
    assert len(nodes) == min(50, total)
    assert {n["id"]: n["name"] for n in nodes}.items() <= everything.items()
