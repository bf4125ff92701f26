"""Run the command line with ``python -m syncstats``."""

from syncstats.cli import main

main()
