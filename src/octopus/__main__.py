"""``python -m octopus ...``: the ``octopus`` command."""

import sys

from octopus.cli import main

sys.exit(main())
