"""``python -m flame_async.compat.flamesdk SCRIPT``: run one node of a flamesdk analysis on
flame-async (the container's command; ``import flamesdk`` resolves to the compat layer)."""

import sys

from ._launch import run_as_main

if len(sys.argv) < 2:
    sys.exit("usage: python -m flame_async.compat.flamesdk SCRIPT")
run_as_main(sys.argv[1])
