"""``python -m cwredis.worker``: the same as ``cw-worker``."""

import sys

from .cli import main

sys.exit(main())
