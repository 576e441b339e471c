"""The benchmarks of realms: each module of a benchmark (``realm_new``, ``verity``, ...) makes its
own scratch filesystem, measures whole commands against their peers, prints a table and writes
its results, with every sample, to ``bench/results/``. Run one from the repository root as
``python -m bench NAME [OPTIONS]`` (``python -m bench list`` names them); bench/README.md says
what each measures and what it found.

What they share is split by concern:

- :mod:`bench.base`: paths, sizes, logging, running an untimed command;
- :mod:`bench.system`: the scratch btrfs filesystem, settling btrfs, the machine's figures;
- :mod:`bench.harness`: start-up checks and options, timing processes and steps, rounds;
- :mod:`bench.trees`: generated root-filesystem trees and their import as appimgs;
- :mod:`bench.report`: tables, ratios, the targets' lines and the JSON results.
"""

BENCHMARKS = (
    "realm_new",
    "update_commit",
    "build",
    "verity",
    "image_realm",
    "userns",
    "registry",
    "booted",
    "health",
    "rebase",
)
"""The benchmarks, in the order bench/README.md describes them."""
