"""``kubeharness bench shell``: what interpreting busybox one-liners costs the CRI emulator.

N containers of the busybox image each run ``sh -c 'while true; do echo tick; sleep 1; done'`` in an
emulator driven by a virtual clock; the clock is then advanced by S seconds and the CPU time the
process spent doing it (interpreting, scheduling, writing CRI log lines) is printed, with the lines
written. The emulator runs in this process and its handlers are called directly: the figure is the
interpreter's and the log writer's, not gRPC's. Target (issue 3): 1,000 containers, 60 s, at most 2 s
of CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from kubeharness.clock import VirtualClock
from kubeharness.emulators.cri import containers, sandboxes
from kubeharness.emulators.cri.config import CriConfig
from kubeharness.emulators.cri.runtime import Runtime
from kubeharness.wire.cri import api_pb2 as cri

SCRIPT = "while true; do echo tick; sleep 1; done"
IMAGE = "docker.io/library/busybox:1.36"
CPU_TARGET_S = 2.0


async def _run(count: int, seconds: float, root: Path) -> tuple[float, float, list[str]]:
    clock = VirtualClock()
    rt = Runtime(CriConfig(preloaded_images=[IMAGE]), root / "state", clock)  # no pull: nothing to wait for
    for index in range(count):
        sandbox = cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(name=f"tick-{index}", namespace="bench", uid=f"uid-{index}"),
            log_directory=str(root / "pods" / f"tick-{index}"),
        )
        sid = (await sandboxes.run(rt, cri.RunPodSandboxRequest(config=sandbox))).pod_sandbox_id
        config = cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name="ticker"),
            image=cri.ImageSpec(image=IMAGE),
            command=["sh", "-c", SCRIPT],
            log_path="ticker/0.log",
        )
        config.linux.security_context.namespace_options.pid = cri.CONTAINER
        request = cri.CreateContainerRequest(pod_sandbox_id=sid, config=config, sandbox_config=sandbox)
        cid = (await containers.create(rt, request)).container_id
        await containers.start(rt, cri.StartContainerRequest(container_id=cid))
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    await clock.advance(seconds)
    cpu, wall = time.process_time() - cpu_before, time.perf_counter() - wall_before
    logs = [c.log_path for c in rt.containers]
    rt.shutdown()
    return cpu, wall, logs


def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="kubeharness-bench-shell-") as tmp:
        cpu, wall, logs = asyncio.run(_run(args.containers, args.seconds, Path(tmp)))
        lines = sum(len(Path(path).read_bytes().splitlines()) for path in logs)
    print(f"{args.containers:,} containers running `sh -c '{SCRIPT}'`, virtual clock advanced by {args.seconds:g} s")
    print(f"  CPU {cpu:.2f} s (wall {wall:.2f} s), {lines:,} log lines written, "
          f"{cpu / max(lines, 1) * 1e6:.1f} µs of CPU per line")
    met = "MET" if cpu <= CPU_TARGET_S or args.containers != 1000 or args.seconds != 60 else "NOT MET"
    if args.containers == 1000 and args.seconds == 60:
        print(f"  target: at most {CPU_TARGET_S:g} s of CPU: {met}")
    return 0
