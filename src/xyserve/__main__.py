"""``python -m xyserve ...``: the ``xyserve`` command."""

import sys

from xyserve.cli import main

sys.exit(main())
