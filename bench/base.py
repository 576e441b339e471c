"""What every module of the benchmarks uses: the repository's paths, sizes, logging to stderr,
running a command that must succeed (untimed work), sizes in words and tool versions."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


RESULTS_DIR = REPO / "bench" / "results"


MIB = 1 << 20


GIB = 1 << 30


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(argv: Sequence[str | Path], env: dict[str, str] | None = None) -> str:
    """Run a command that must succeed (untimed work); return its stdout."""
    result = subprocess.run(
        [str(arg) for arg in argv], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(str(a) for a in argv)} failed ({result.returncode}): "
            f"{result.stderr.strip() or result.stdout.strip()}"
        )
    return result.stdout


def human(size: int) -> str:
    return f"{size / GIB:.1f} GiB" if size >= GIB else f"{size / MIB:.0f} MiB"


def tool_version(argv: list[str]) -> str:
    try:
        return run(argv).splitlines()[0].strip()
    except (OSError, RuntimeError, IndexError):
        return "unknown"


def missing_tools(tools: Sequence[str]) -> list[str]:
    return [tool for tool in tools if shutil.which(tool) is None]
