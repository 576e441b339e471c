"""Pulling from and pushing to an OCI registry: realms against skopeo + umoci, in one run.

On a btrfs filesystem of its own (a sparse image, loop-mounted under a temporary directory)
this benchmark makes two stores (``a`` pushes, ``b`` pulls), starts Debian's docker-registry on
127.0.0.1 with its storage on the same filesystem (``tests/registry_server.py``, the server the
tests use), imports the default appimg ``base`` (exported from the store given by ``--from``,
``/var/lib/realms`` by default; the tree of ``realms appimg build``, about 170 MiB) into store
``a`` and pushes it. Then, round by round:

- ``realms appimg pull``: ``realms -q appimg pull HOST/bench/base:v1 --name NAME
  --tls-verify=false`` into store ``b``; untimed afterwards: the appimg is removed and the blob
  cache emptied, so every run downloads everything;
- ``skopeo copy + umoci unpack``: ``skopeo copy --src-tls-verify=false docker://... oci:DIR:v1``
  then ``umoci unpack --image DIR:v1 BUNDLE``, the same image from the same registry into a tree
  on the same filesystem; both removed afterwards (untimed).

The target: realms' median at most 1.0x the peer's (goal 0.7x). The peak memory (max RSS) of
every realms process is kept too.

Then what a push of an update sends and what a pull of a sealed update downloads:

- ``realms update-appimg base -- apt-get install -y curl`` (apt lists fetched and cleaned in the
  same session) makes version 2, pushed to the same repository: the bytes realms uploaded
  against the gzip-compressed size of the files that changed (found here by comparing the two
  trees, not by realms' own means): target at most 1.3x;
- version 3 adds a small package (``less``) to version 2; versions 1, 2 and 3 are sealed and
  pushed in turn (``HOST/bench/sealed``), and store ``b``, which trusts the key, pulls each
  after its push: the bytes downloaded for the updates against the image's size, target at
  most 1%. The curl update cannot get there: its new files alone, compressed, are about 2% of
  the image (the line says so); the small update shows what a delta costs beyond its content.

With ``--memory-mb N`` (default 1024; 0 skips it) a synthetic tree of N MiB of incompressible
files is pushed and pulled once and the peak memory of both is reported: target under 150 MB.

Needs root; cleans up after itself (registry stopped, scratch filesystem released). Run from the
repository root::

    .venv/bin/python -m bench registry
    .venv/bin/python -m bench registry --runs 3 --memory-mb 0
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.base import MIB, RESULTS_DIR, log, run
from bench.harness import (
    BenchBase,
    Measurement,
    add_output_option,
    add_seed_option,
    measure,
    prepare_run,
    realms_command,
    recorded_command,
)
from bench.report import format_ratio, print_table, print_targets, ratio, record, target_line
from bench.report import write_results as write_json
from bench.system import SCRATCH_TOOLS, machine_info, remove_tree, scratch_btrfs, scratch_size
from bench.trees import generate_source
from tests.registry_server import RunningRegistry, start_registry, unpack_registry

RESULTS = RESULTS_DIR / "registry.json"
PULL_TARGET, PULL_GOAL = 1.0, 0.7
PUSH_TARGET = 1.3
DELTA_TARGET = 0.01
MEMORY_TARGET_MB = 150
UPDATE = (
    "apt-get update -q && apt-get install -y -q curl && apt-get clean"
    " && rm -rf /var/lib/apt/lists/*"
)

SMALL_UPDATE = (
    "apt-get update -q && apt-get install -y -q less && apt-get clean"
    " && rm -rf /var/lib/apt/lists/*"
)

REALMS_PULL = "realms appimg pull"
PEER_PULL = "skopeo copy + umoci unpack"


@dataclass
class Process:
    """What one finished process cost: wall time and peak memory."""

    ms: float
    max_rss_mb: float
    stdout: str


def measured(argv: Sequence[str | Path], env: dict[str, str] | None = None) -> Process:
    """Run a command that must succeed; its wall time and its peak resident memory (wait4)."""
    command = [str(arg) for arg in argv]
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        elapsed = (time.perf_counter() - start) * 1000
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {err.read().decode()[-2000:]}")
        return Process(elapsed, usage.ru_maxrss / 1024, out.read().decode())


@dataclass
class Bench(BenchBase):
    env_a: dict[str, str]
    env_b: dict[str, str]
    registry: RunningRegistry
    peak_rss_mb: dict[str, float] = field(default_factory=dict)

    def realms_in(self, env: dict[str, str], *args: str) -> Process:
        result = measured(self.realms_cmd(*args), env)
        what = " ".join(args[:2])
        self.peak_rss_mb[what] = max(self.peak_rss_mb.get(what, 0.0), result.max_rss_mb)
        return result

    def ref(self, path: str) -> str:
        return f"{self.registry.host}/{path}"

    def realms_pull(self, ref: str) -> Any:
        def sample(run_number: int) -> float:
            name = self.fresh("pulled")
            self.settle()
            result = self.realms_in(
                self.env_b, "appimg", "pull", ref, "--name", name, "--tls-verify=false"
            )
            run(self.realms_cmd("appimg", "remove", name), self.env_b)
            remove_tree(Path(self.env_b["REALMS_STORE"]) / "cache" / "blobs")
            return result.ms

        return sample

    def peer_pull(self, ref: str) -> Any:
        def sample(run_number: int) -> float:
            layout = self.mountpoint / self.fresh("oci")
            bundle = self.mountpoint / self.fresh("bundle")
            self.settle()
            copy = measured(
                [
                    "skopeo",
                    "copy",
                    "-q",
                    "--src-tls-verify=false",
                    f"docker://{ref}",
                    f"oci:{layout}:v1",
                ]
            )
            unpack = measured(["umoci", "unpack", "--image", f"{layout}:v1", bundle])
            shutil.rmtree(layout)
            shutil.rmtree(bundle)
            return copy.ms + unpack.ms

        return sample


def pushed_bytes(output: str) -> int:
    """The bytes realms says it uploaded (``realms appimg push --json``)."""
    return int(json.loads(output)["uploaded"])


def changed_files_gzip_size(old: Path, new: Path, work: Path) -> tuple[int, int]:
    """How many files differ between two trees (added or changed: type, size, mode, owners,
    mtime or content) and the gzip -6 size of a tar of just those entries."""
    changed: list[str] = []
    for directory, _dirs, names in os.walk(new):
        for name in [*names, *_dirs]:
            path = Path(directory) / name
            relative = str(path.relative_to(new))
            try:
                before = (old / relative).lstat()
            except FileNotFoundError:
                changed.append(relative)
                continue
            after = path.lstat()
            if (before.st_mode, before.st_uid, before.st_gid, before.st_size) != (
                after.st_mode,
                after.st_uid,
                after.st_gid,
                after.st_size,
            ) or int(before.st_mtime) != int(after.st_mtime):
                changed.append(relative)
    listing = work / "changed.list"
    listing.write_text("\n".join(changed) + "\n")
    archive = work / "changed.tar"
    run(
        [
            "tar",
            "--create",
            "--no-recursion",
            f"--file={archive}",
            f"--directory={new}",
            "--xattrs",
            "--numeric-owner",
            f"--files-from={listing}",
        ]
    )
    with open(archive, "rb") as raw:
        size = len(gzip.compress(raw.read(), compresslevel=6))
    archive.unlink()
    return len(changed), size


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench registry", description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="timed pulls of each tool")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--from",
        dest="source_store",
        default="/var/lib/realms",
        help="the store whose appimg base is exported (default /var/lib/realms)",
    )
    parser.add_argument(
        "--memory-mb",
        type=int,
        default=1024,
        help="size of the synthetic tree for the memory check (0: skip)",
    )
    parser.add_argument(
        "--pull-only", action="store_true", help="only the pull timings (no update, seal, memory)"
    )
    add_seed_option(parser)
    add_output_option(parser, RESULTS)
    return parser.parse_args(argv)


def export_base(source_store: str, target: Path) -> None:
    env = {**os.environ, "REALMS_STORE": source_store}
    info = run([*realms_command(), "-q", "appimg", "show", "base", "--json"], env)
    current = json.loads(info)
    tree = next(v["version"] for v in reversed(current["versions"]) if v["kind"] == "tree")
    run([*realms_command(), "-q", "appimg", "export", "base", target, "--version", str(tree)], env)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not prepare_run((*SCRATCH_TOOLS, "skopeo", "umoci", "apt-get", "dpkg-deb")):
        return 2
    started = time.perf_counter()
    size = scratch_size(0, 8 * 1024 + 4 * args.memory_mb)
    results: dict[str, Any] = {}
    targets: list[str] = []
    try:
        with scratch_btrfs(size) as mountpoint:
            machine = machine_info(mountpoint.parent)
            tools = mountpoint / "tools"
            tools.mkdir()
            binary = unpack_registry(tools)
            with start_registry(binary, mountpoint / "registry") as registry:
                env_a = {**os.environ, "REALMS_STORE": str(mountpoint / "a")}
                env_b = {**os.environ, "REALMS_STORE": str(mountpoint / "b")}
                bench = Bench(mountpoint, realms_command(), env_a, env_b, registry)
                for env in (env_a, env_b):
                    run(bench.realms_cmd("init"), env)
                tarball = mountpoint / "base.tar"
                log(f"exporting base from {args.source_store}")
                export_base(args.source_store, tarball)
                run(bench.realms_cmd("appimg", "import", "base", str(tarball)), env_a)
                tarball.unlink()
                first = bench.realms_in(
                    env_a,
                    "appimg",
                    "push",
                    "base",
                    bench.ref("bench/base"),
                    "--tls-verify=false",
                    "--json",
                )
                results["push_v1_uploaded"] = pushed_bytes(first.stdout)
                ref = bench.ref("bench/base:v1")
                measurements = [
                    Measurement(REALMS_PULL, "base", args.runs, bench.realms_pull(ref)),
                    Measurement(PEER_PULL, "base", args.runs, bench.peer_pull(ref)),
                ]
                measure(measurements, args.warmup, mountpoint)
                pull_ratio = ratio(measurements[0].median, measurements[1].median)
                results["pull"] = {
                    m.method: {"median_ms": round(m.median), "samples_ms": m.samples}
                    for m in measurements
                }
                results["pull"]["ratio"] = pull_ratio
                print_table(
                    ["method", "median ms", "min ms", "max ms", "vs peer"],
                    [
                        [
                            m.method,
                            f"{m.median:.0f}",
                            f"{min(m.samples):.0f}",
                            f"{max(m.samples):.0f}",
                            format_ratio(ratio(m.median, measurements[1].median)),
                        ]
                        for m in measurements
                    ],
                    left=1,
                )
                targets.append(
                    target_line(
                        f"pull at most {PULL_TARGET}x skopeo+umoci (goal {PULL_GOAL}x)",
                        format_ratio(pull_ratio),
                        pull_ratio is not None and pull_ratio <= PULL_TARGET,
                    )
                )
                if not args.pull_only:
                    results.update(update_and_seal(bench, mountpoint, targets))
                if args.memory_mb and not args.pull_only:
                    results["memory"] = memory_check(bench, mountpoint, args, targets)
                results["peak_rss_mb"] = bench.peak_rss_mb
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    print()
    print_table(
        ["realms command", "peak RSS MB"],
        [[k, f"{v:.0f}"] for k, v in sorted(bench.peak_rss_mb.items())],
        left=1,
    )
    print_targets(targets)
    body = {
        "config": vars(args) | {"output": str(args.output)},
        "realms_command": recorded_command(bench.realms),
        **results,
    }
    write_json(args.output, record("registry", machine, body, started))
    return 0


def update_and_seal(bench: Bench, mountpoint: Path, targets: list[str]) -> dict[str, Any]:
    env_a, env_b = bench.env_a, bench.env_b
    store_a = Path(env_a["REALMS_STORE"])
    log("update-appimg base: installing curl")
    run(bench.realms_cmd("update-appimg", "base", "--", "sh", "-c", UPDATE), env_a)
    second = bench.realms_in(
        env_a, "appimg", "push", "base", bench.ref("bench/base"), "--tls-verify=false", "--json"
    )
    uploaded = pushed_bytes(second.stdout)
    files, compressed = changed_files_gzip_size(
        store_a / "appimg/base/v1", store_a / "appimg/base/v2", mountpoint
    )
    push_ratio = ratio(uploaded, compressed)
    targets.append(
        target_line(
            f"push of an update at most {PUSH_TARGET}x the changed files compressed",
            f"{uploaded / MIB:.2f} MiB / {compressed / MIB:.2f} MiB ({files} entries) = "
            f"{format_ratio(push_ratio)}",
            push_ratio is not None and push_ratio <= PUSH_TARGET,
        )
    )
    run(bench.realms_cmd("key", "generate", "bench"), env_a)
    public = run(bench.realms_cmd("key", "export", "bench"), env_a).strip()
    run(bench.realms_cmd("key", "trust", "bench", public), env_b)
    # Sealed: the base (pulled whole), the curl update, then a small update on top of it.
    log("update-appimg base: installing less (a small update)")
    run(bench.realms_cmd("update-appimg", "base", "--", "sh", "-c", SMALL_UPDATE), env_a)
    sizes = [sealed_push_and_pull(bench, tree) for tree in (1, 2, 3)]
    rows = {"curl update": sizes[1], "small update": sizes[2]}
    for what, (downloaded, image_size) in rows.items():
        share = downloaded / image_size
        floor = (
            f" (its changed files gzipped: {compressed / image_size:.2%})" if "curl" in what else ""
        )
        targets.append(
            target_line(
                f"pull of a sealed {what} at most {DELTA_TARGET:.0%} of the image",
                f"{downloaded / MIB:.2f} MiB of {image_size / MIB:.0f} MiB = {share:.2%}{floor}",
                share <= DELTA_TARGET,
            )
        )
    return {
        "push_update": {
            "uploaded": uploaded,
            "changed_entries": files,
            "changed_gzip": compressed,
            "ratio": push_ratio,
        },
        "sealed_pull": {"first": sizes[0], **rows},
    }


def sealed_push_and_pull(bench: Bench, tree_version: int) -> tuple[int, int]:
    """Seal tree version ``tree_version`` of base in store a, push it, pull it into store b;
    return the bytes the pull downloaded and the image's size."""
    env_a, env_b = bench.env_a, bench.env_b
    run(bench.realms_cmd("appimg", "rollback", "base", str(tree_version)), env_a)
    run(bench.realms_cmd("appimg", "seal", "base", "--channel", "bench"), env_a)
    pushed = bench.realms_in(
        env_a, "appimg", "push", "base", bench.ref("bench/sealed"), "--tls-verify=false", "--json"
    )
    pulled = bench.realms_in(
        env_b,
        "appimg",
        "pull",
        json.loads(pushed.stdout)["ref"],
        "--name",
        "sealed",
        "--tls-verify=false",
        "--json",
    )
    (result,) = json.loads(pulled.stdout)
    image = Path(env_b["REALMS_STORE"]) / "appimg/sealed" / f"v{result['version']}.img"
    return int(result["downloaded"]), image.stat().st_size


def memory_check(
    bench: Bench, mountpoint: Path, args: argparse.Namespace, targets: list[str]
) -> dict[str, float]:
    source = mountpoint / "synthetic"
    generate_source(source, args.memory_mb * MIB, args.seed)
    run(bench.realms_cmd("appimg", "import", "big", str(source)), bench.env_a)
    push = bench.realms_in(
        bench.env_a, "appimg", "push", "big", bench.ref("bench/big"), "--tls-verify=false"
    )
    pull = bench.realms_in(
        bench.env_b, "appimg", "pull", bench.ref("bench/big:v1"), "--tls-verify=false"
    )
    peak = max(push.max_rss_mb, pull.max_rss_mb)
    targets.append(
        target_line(
            f"peak memory of push and pull of a {args.memory_mb} MiB tree under "
            f"{MEMORY_TARGET_MB} MB",
            f"push {push.max_rss_mb:.0f} MB, pull {pull.max_rss_mb:.0f} MB",
            peak < MEMORY_TARGET_MB,
        )
    )
    return {"push_mb": push.max_rss_mb, "pull_mb": pull.max_rss_mb}


if __name__ == "__main__":
    raise SystemExit(main())
