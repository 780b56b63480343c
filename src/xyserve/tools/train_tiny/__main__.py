"""``python -m xyserve.tools.train_tiny``."""

from .cli import main

raise SystemExit(main())
