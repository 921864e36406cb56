"""``python -m atdata_appview``: the same command line as ``atdata-appview``
(:mod:`atdata_appview.cli`)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
