"""Benchmark of the shell interpreter: ``python -m kubeharness.emulators.cri.shell.bench``.

Runs N containers of ``sh -c 'while true; do echo tick; sleep 1; done'`` for S seconds of virtual
time with the simplest driver (a heap of (until_ns, program) advanced in time order, stdout appended to
a bytearray) and prints the CPU seconds spent starting and running them (the per-container
filesystem setup is excluded). Target: at most 2 s for 1,000 programs over 60 s.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import tempfile
import time
from pathlib import Path

from kubeharness.emulators.cri.shell.interp import APPLET_NAMES, Machine, Program, start
from kubeharness.emulators.cri.shell.layout import busybox_layout
from kubeharness.emulators.cri.shell.vfs import Vfs

NS = 1_000_000_000
T0 = 1_767_225_600 * NS
SCRIPT = "while true; do echo tick; sleep 1; done"


def run(programs: int = 1000, seconds: int = 60, script: str = SCRIPT) -> tuple[float, int]:
    """CPU seconds for ``programs`` programs over ``seconds`` of virtual time, and the bytes they wrote."""
    now = [T0]
    out = bytearray()
    layout = busybox_layout(APPLET_NAMES)
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME": "bench"}
    with tempfile.TemporaryDirectory(prefix="shell-bench-") as tmp:
        machines = [
            Machine(
                fs=Vfs(layout, Path(tmp) / str(i), [], now_ns=lambda: now[0]),
                env=dict(env),
                cwd="/",
                uid=0,
                gid=0,
                groups=[0],
                hostname=f"pod-{i}",
                pid=1,
                now_ns=lambda: now[0],
                stdout=out.extend,
                stderr=out.extend,
            )
            for i in range(programs)
        ]
        end = T0 + seconds * NS
        seq = itertools.count()
        heap: list[tuple[int, int, Program]] = []
        started = time.process_time()
        for machine in machines:
            program = start(["sh", "-c", script], machine)
            wait = next(program)
            if wait.until_ns is not None:
                heap.append((wait.until_ns, next(seq), program))
        heapq.heapify(heap)
        while heap:
            until, _, program = heapq.heappop(heap)
            if until > end:
                break
            now[0] = max(now[0], until)
            try:
                wait = program.send(None)
            except StopIteration:
                continue
            if wait.until_ns is not None:
                heapq.heappush(heap, (wait.until_ns, next(seq), program))
        cpu = time.process_time() - started
    return cpu, len(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--programs", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=60)
    args = parser.parse_args()
    cpu, written = run(args.programs, args.seconds)
    lines = written // len(b"tick\n")
    print(f"{args.programs} programs x {args.seconds} s virtual: {cpu:.2f} s CPU ({lines} lines written)")


if __name__ == "__main__":
    main()
