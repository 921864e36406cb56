"""``python -m atdata_ingest``: the same command line as ``atdata-ingest``
(:mod:`atdata_ingest.cli`); the supervisor starts its child this way."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
