"""``kubeharness bench cni``: ADD and DEL latency of ``kubeharness-cni`` against the reference host-local.

Both plugins are executed exactly as a runtime executes them (one process per command, the CNI_*
environment, the configuration on stdin) and do the same address allocation from the same kind of
range, each in its own data directory: ``kubeharness-cni`` in emulated mode, host-local run directly as a
plugin. The two are interleaved call by call so that both see the same machine load. VERSION, which
does no work, measures the start-up cost alone. The target: ADD and DEL p50 at most 2x host-local's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kubeharness.bench.stats import Summary, summarize

TARGET_RATIO = 2.0
REFERENCE = "/usr/lib/cni/host-local"


def _conf(kind: str, data_dir: Path) -> bytes:
    ipam: dict[str, object] = {"ranges": [[{"subnet": "10.200.0.0/16"}]], "dataDir": str(data_dir)}
    if kind == "host-local":
        ipam["type"] = "host-local"
    return json.dumps({"cniVersion": "1.0.0", "name": "bench", "type": kind, "ipam": ipam}).encode()


def _timed(argv: list[str], command: str, cid: str, conf: bytes) -> int:
    env = {"PATH": os.environ.get("PATH", ""), "CNI_COMMAND": command, "CNI_CONTAINERID": cid,
           "CNI_NETNS": "/var/run/netns/bench", "CNI_IFNAME": "eth0", "CNI_PATH": str(Path(REFERENCE).parent)}
    start = time.perf_counter_ns()
    done = subprocess.run(argv, input=conf, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter_ns() - start
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} {command} {cid} failed: {done.stdout.decode()} {done.stderr.decode()}")
    return elapsed


def measure(plugin: str, reference: str, count: int, warmup: int, root: Path) -> dict[str, dict[str, Summary]]:
    """Per command (VERSION, ADD, DEL) the summaries of both plugins, called alternately."""
    sides = {"kubeharness-cni": ([plugin], _conf("kubeharness-cni", root / "ours")),
             "host-local": ([reference], _conf("host-local", root / "theirs"))}
    samples: dict[str, dict[str, list[int]]] = {}
    for command in ("VERSION", "ADD", "DEL"):
        for index in range(warmup + count):
            for side, (argv, conf) in sides.items():
                elapsed = _timed(argv, command, f"pod{index}", conf)
                if index >= warmup:
                    samples.setdefault(command, {}).setdefault(side, []).append(elapsed)
    return {command: {side: summarize(values) for side, values in per.items()} for command, per in samples.items()}


def interpreter_floor(count: int) -> Summary:
    """What starting this Python without site or user code costs: the floor under any Python plugin."""
    samples = []
    for _ in range(count):
        start = time.perf_counter_ns()
        subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], check=True)
        samples.append(time.perf_counter_ns() - start)
    return summarize(samples)


def report(figures: dict[str, dict[str, Summary]]) -> list[str]:
    lines = [f"{'command':<8} {'kubeharness-cni p50/p99 ms':>27} {'host-local p50/p99 ms':>22} {'p50 ratio':>10}"]
    verdicts = []
    for command, per in figures.items():
        ours, theirs = per["kubeharness-cni"], per["host-local"]
        ratio = ours.p50_ms / theirs.p50_ms if theirs.p50_ms else float("inf")
        lines.append(f"{command:<8} {ours.p50_ms:>17.2f} / {ours.p99_ms:>7.2f} {theirs.p50_ms:>12.2f} / "
                     f"{theirs.p99_ms:>7.2f} {ratio:>9.2f}x")
        if command != "VERSION":
            verdicts.append(f"{command} p50 {'within' if ratio <= TARGET_RATIO else 'MISSES'} the target "
                            f"(at most {TARGET_RATIO:g}x host-local): {ratio:.2f}x")
    return [*lines, "", *verdicts]


def main(args: argparse.Namespace) -> int:
    plugin = args.plugin or shutil.which("kubeharness-cni") or str(Path(sys.executable).with_name("kubeharness-cni"))
    if not Path(args.reference).exists():
        print(f"kubeharness bench cni: the reference plugin {args.reference} is missing (containernetworking-plugins)",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="kh-bench-cni-") as tmp:
        figures = measure(plugin, args.reference, args.count, args.warmup, Path(tmp))
    floor = interpreter_floor(args.count)
    print(f"{args.count} ADDs then {args.count} DELs per plugin, one process per command, interleaved; "
          f"{os.cpu_count()} CPUs")
    for line in report(figures):
        print(line)
    print(f"floor: `python -I -S -c pass` p50 {floor.p50_ms:.2f} ms, p99 {floor.p99_ms:.2f} ms")
    return 0
