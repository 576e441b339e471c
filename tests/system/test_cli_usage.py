"""The command line's help and usage errors, as root runs it (as any other user, realms stops
at its root check before it parses a store's arguments)."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import Realms


def test_help_and_usage_errors(tmp_path: Path) -> None:
    realms = Realms(tmp_path / "store")
    assert realms("--help").returncode == 0
    for words in (
        ["init"],
        ["status"],
        ["appimg"],
        ["appimg", "import"],
        ["new"],
        ["run"],
        ["shell"],
        ["remove"],
        ["default"],
        ["list"],
        ["show"],
    ):
        result = realms(*words, "--help")
        assert result.returncode == 0 and "usage: realms" in result.stdout
    for words in (["frobnicate"], ["new"], ["appimg", "import", "x"], ["init", "--backend", "zfs"]):
        result = realms(*words, check=False)
        assert result.returncode == 2 and "realms: error:" in result.stderr
    result = realms("run", "x", check=False)
    assert result.returncode == 2 and "run needs a command after --" in result.stderr
    # Global options work after the command too.
    assert "no realms store at /nowhere" in realms.fails("list", "--store", "/nowhere")
