"""Run the command line as ``python -m realms``."""

from realms.cli import main

raise SystemExit(main())
