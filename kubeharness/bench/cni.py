"""``kubeharness bench cni``: ADD and DEL latency of ``kubeharness-cni`` against the reference host-local.

Every plugin is executed exactly as a runtime executes it (one process per command, the CNI_*
environment, the configuration on stdin) and does the same address allocation from the same kind of
range, each in its own data directory. Three sides, interleaved call by call so that all see the same
machine load: host-local run directly as a plugin; ``kubeharness-cni`` in emulated mode, the Python
entry point; and ``kubeharness-cni`` through its fast path, the C shim (built into the temporary
directory) talking to a fork server that the bench starts and stops. VERSION, which does no work,
measures the start-up cost alone. The target: ADD and DEL p50 of the fast path at most 2x host-local's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
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


PYTHON, FAST, HOST_LOCAL = "kubeharness-cni", "kubeharness-cni fast", "host-local"
EXPLAINED = {PYTHON: "the Python entry point", FAST: "the C shim + fork server", HOST_LOCAL: "the reference"}


def measure(plugins: dict[str, str], count: int, warmup: int, root: Path) -> dict[str, dict[str, Summary]]:
    """Per command (VERSION, ADD, DEL) the summary of each plugin (name -> executable), called alternately."""
    sides = {name: ([argv], _conf("host-local" if name == HOST_LOCAL else "kubeharness-cni", root / f"data{i}"))
             for i, (name, argv) in enumerate(plugins.items())}
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
    """A table (command, plugin, p50, p99, p50 against host-local's) and a verdict per command and plugin."""
    lines = [f"{'command':<8} {'plugin':<21} {'p50 ms':>8} {'p99 ms':>8} {'p50 / host-local':>17}"]
    verdicts = []
    for command, per in figures.items():
        theirs = per[HOST_LOCAL]
        for side, summary in per.items():
            ratio = summary.p50_ms / theirs.p50_ms if theirs.p50_ms else float("inf")
            shown = "" if side == HOST_LOCAL else f"{ratio:.2f}x"
            lines.append(f"{command:<8} {side:<21} {summary.p50_ms:>8.2f} {summary.p99_ms:>8.2f} {shown:>17}")
            if command != "VERSION" and side != HOST_LOCAL:
                verdicts.append(f"{command} p50 of {side} ({EXPLAINED[side]}) "
                                f"{'within' if ratio <= TARGET_RATIO else 'MISSES'} the target "
                                f"(at most {TARGET_RATIO:g}x host-local): {ratio:.2f}x")
    return [*lines, "", *verdicts]


class ForkServer:
    """``with ForkServer(socket_path):`` a ``kubeharness cni serve`` process, up when the block starts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.process: subprocess.Popen[bytes] | None = None
        self.log = path.with_suffix(".log")

    def __enter__(self) -> ForkServer:
        argv = [sys.executable, "-m", "kubeharness.cli", "cni", "serve", "--socket", str(self.path)]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        for _ in range(500):  # up to 10 s for it to import and listen
            if self.process.poll() is not None:
                raise RuntimeError(f"the fork server exited with {self.process.returncode}: {self.log.read_text()}")
            try:
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.connect(str(self.path))
                    if probe.recv(1) == b"h":
                        return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"the fork server did not listen on {self.path}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


def _run(args: argparse.Namespace, plugin: str, tmp: Path) -> int:
    plugins = {HOST_LOCAL: args.reference, PYTHON: plugin}
    server = None
    try:
        from kubeharness.emulators.cni.shim import ShimError, build

        shim = build(tmp / "kubeharness-cni", str(tmp / "cni.sock"), Path(plugin))
        plugins[FAST] = str(shim)
        server = ForkServer(tmp / "cni.sock").__enter__()
    except ShimError as err:
        print(f"kubeharness bench cni: no fast path measured: {err}", file=sys.stderr)
    try:
        figures = measure(plugins, args.count, args.warmup, tmp)
        if server is not None and not server.alive():
            raise RuntimeError("the fork server died during the run, so the fast path's figures are the "
                               f"fallback's: {server.log.read_text()}")
    finally:
        if server is not None:
            server.__exit__()
    floor = interpreter_floor(args.count)
    print(f"{args.count} ADDs then {args.count} DELs per plugin, one process per command, interleaved; "
          f"{os.cpu_count()} CPUs")
    for line in report(figures):
        print(line)
    print(f"floor of a Python plugin: `python -I -S -c pass` p50 {floor.p50_ms:.2f} ms, p99 {floor.p99_ms:.2f} ms")
    return 0


def main(args: argparse.Namespace) -> int:
    plugin = args.plugin or shutil.which("kubeharness-cni") or str(Path(sys.executable).with_name("kubeharness-cni"))
    if not Path(args.reference).exists():
        print(f"kubeharness bench cni: the reference plugin {args.reference} is missing (containernetworking-plugins)",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="kh-bench-cni-") as tmp:
        return _run(args, plugin, Path(tmp))
