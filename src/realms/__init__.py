"""realms: Citadel-style application images and the realms (containers) made from them.

The importable API lives in :mod:`realms.api`; the command line in :mod:`realms.cli` only parses
arguments and prints what the API returns.
"""

__version__ = "0.1.0"
