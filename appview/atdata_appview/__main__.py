"""``python -m atdata_appview``: the command line."""

from .cli import main

main()
