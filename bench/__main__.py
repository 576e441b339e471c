"""``python -m bench NAME [OPTIONS]`` runs one benchmark; ``python -m bench list`` names them.

``python -m bench NAME --help`` shows a benchmark's options. Run it from the repository root
(as root, with the project's virtual environment: ``.venv/bin/python -m bench realm_new``).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

from bench import BENCHMARKS


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if not words or words[0] in ("-h", "--help", "list"):
        print(__doc__.strip() if words[:1] != ["list"] else "benchmarks:")
        for name in BENCHMARKS:
            summary = (importlib.import_module(f"bench.{name}").__doc__ or "").strip()
            print(f"  {name:14} {summary.splitlines()[0] if summary else ''}")
        return 0 if words else 2
    name, rest = words[0], words[1:]
    if name not in BENCHMARKS:
        print(f"bench: no benchmark named {name!r} (python -m bench list)", file=sys.stderr)
        return 2
    sys.argv[0] = f"python -m bench {name}"  # what argparse shows as the program
    run: Callable[[Sequence[str] | None], int] = importlib.import_module(f"bench.{name}").main
    return run(rest)


if __name__ == "__main__":
    raise SystemExit(main())
