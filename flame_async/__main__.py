"""``python -m flame_async``: the ``flame-async`` command."""

import sys

from .cli import main

sys.exit(main())
