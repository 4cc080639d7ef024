"""Helper process for results.py: serve a 2-node local platform, print its node envs as JSON."""

from __future__ import annotations

import json
import sys

import anyio

from flame_async.local import LocalPlatform


async def main() -> None:
    async with LocalPlatform(2, po_interval=3600.0) as platform:
        print(json.dumps([node.env for node in platform.nodes]), flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)  # until the parent closes stdin


if __name__ == "__main__":
    anyio.run(main)
