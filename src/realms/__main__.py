"""Run the command line as ``python -m realms``."""

from realms.cli import run

if __name__ == "__main__":
    run()
