"""Imported by the optional ``.pth`` line for containers (only when
``FLAME_ASYNC_FLAMESDK_COMPAT=1``): ``import flamesdk`` then resolves to the compat layer in
every interpreter of that environment. See ``docs/howto/migrating.md``."""

from ._alias import install

install()
