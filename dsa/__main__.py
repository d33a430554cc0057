"""``python -m dsa <command> ...``: the project's commands (:mod:`dsa.commands`; ``python -m dsa --help`` lists
them)."""

import sys

from dsa.commands import main

sys.exit(main())
