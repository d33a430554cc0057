"""``python -m dsa.train``: train one configuration (the same as ``python -m dsa train``; see :mod:`dsa.train.cli`)."""

import sys

from dsa.train.cli import train_main

sys.exit(train_main(prog="python -m dsa.train"))
