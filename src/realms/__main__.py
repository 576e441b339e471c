"""Run the command line as ``python -m realms``."""

from realms.cli import run

run()
