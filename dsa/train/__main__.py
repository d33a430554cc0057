"""``python -m dsa.train``: train one configuration (see :mod:`dsa.train.trainer`)."""

import sys

from dsa.train.trainer import main

sys.exit(main())
