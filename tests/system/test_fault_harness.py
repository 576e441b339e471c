"""The fault harness (tests/system/faults_harness.py) run for real: random SIGKILLs, kills at
checkpoints, a full disk and concurrent commands on the same realms and appimg; ``realms check``
must then be ok, or made ok by ``--repair``; every realm runs and no home is lost.

The normal suite runs a short round (about 40 kills); ``-m stress`` runs the long one (1000+
kills, 30 minutes or more on a busy machine), and writes its counts as JSON to
$REALMS_FAULTS_REPORT when set.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.helpers import Realms
from tests.system.faults_harness import Counts, Harness, fill, small_pool, unfill


def _run(
    directory: Path, tree: Path, *, rounds: int, seed: int, enospc_every: int, run_every: int
) -> Counts:
    counts = Counts()
    with small_pool(directory) as pool:
        realms = Realms(pool / "store")
        realms("init")
        harness = Harness(realms, tree, seed, counts)
        harness.prepare()
        for number in range(1, rounds + 1):
            if enospc_every and number % enospc_every == 0:
                filler = fill(pool)
                try:
                    harness.round(full=True)
                finally:
                    unfill(filler)
                harness.verify()
            else:
                harness.round()
            if number % run_every == 0:
                harness.run_all()
            if number % 25 == 0:
                print(json.dumps(counts.to_json()), file=sys.stderr, flush=True)
        harness.verify(run_all=True)
    return counts


def _assert_sound(counts: Counts) -> None:
    print(json.dumps(counts.to_json(), indent=2))
    assert counts.unfixable == 0, counts.details
    assert counts.lost_homes == 0, counts.details
    assert counts.failed_runs == 0, counts.details


def test_short_fault_run(tmp_path: Path, busybox_tree: Path) -> None:
    counts = _run(tmp_path, busybox_tree, rounds=20, seed=15, enospc_every=7, run_every=10)
    _assert_sound(counts)
    # How many random kills land depends on the machine's speed; kills at checkpoints do not.
    assert counts.checkpoint_kills > 0 and counts.kills > counts.checkpoint_kills, counts.to_json()
    assert counts.runs > 0, counts.to_json()


@pytest.mark.stress
@pytest.mark.timeout(6 * 3600)
def test_stress_fault_run(
    request: pytest.FixtureRequest, tmp_path: Path, busybox_tree: Path
) -> None:
    expression = str(request.config.getoption("-m") or "")
    if "stress" not in expression or "not stress" in expression:
        pytest.skip("the long fault run: select it with -m stress")
    rounds = int(os.environ.get("REALMS_FAULTS_ROUNDS", "900"))
    counts = _run(tmp_path, busybox_tree, rounds=rounds, seed=2026, enospc_every=10, run_every=10)
    report = os.environ.get("REALMS_FAULTS_REPORT")
    if report:
        Path(report).write_text(json.dumps(counts.to_json(), indent=2) + "\n")
    _assert_sound(counts)
    assert counts.kills >= 1000, counts.to_json()
