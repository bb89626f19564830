"""``kubeharness bench csi``: how long a CSI plugin takes for the node side of a volume's life.

    setup    untimed: NodeGetInfo (the node id), then CreateVolume and ControllerPublishVolume to that
             node for each of ``--volumes`` volumes, then ``--warmup`` untimed cycles of each volume
    phase 1  ``--cycles`` cycles serially on one connection, going from one volume to the next; a
             cycle is NodeStageVolume, NodePublishVolume, NodeUnpublishVolume, NodeUnstageVolume
    phase 2  ``--cycles`` cycles by ``--concurrency`` clients, each on its own connection and cycling a
             volume of its own (so no call is ABORTED for a volume in use)
    cleanup  untimed: unpublish, unstage, ControllerUnpublishVolume and DeleteVolume of every volume

Without ``--endpoint`` it starts ``kubeharness csi serve`` (emulated mounts) as a subprocess in a
temporary directory, whose ``kubelet`` directory is the plugin's only root besides its state, and
removes that directory at the end; with ``--endpoint``, staging and target paths are made under
``--kubelet-dir``, which must be one of that plugin's roots. Each phase prints count, p50, p99 and max
per RPC, calls per second and, for a plugin it started, the plugin's CPU time; then the target line
(p99 at most 5 ms per call, emulated mode). Failed calls are counted and printed, never raised; the
exit code is 1 if any call failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from kubeharness.bench.client import CHANNEL_OPTIONS, Recorder, TimedClient, grpc_target
from kubeharness.bench.drive import connect
from kubeharness.bench.emulator import SpawnedEmulator
from kubeharness.bench.errors import BenchError
from kubeharness.bench.procstat import sample
from kubeharness.bench.report import failure_lines
from kubeharness.bench.stats import rate_per_second, summarize
from kubeharness.wire.csi import csi_pb2 as csi
from kubeharness.wire.csi import csi_pb2_grpc as csi_grpc

TARGET_P99_MS = 5.0
CYCLE_RPCS = ("NodeStageVolume", "NodePublishVolume", "NodeUnpublishVolume", "NodeUnstageVolume")
VOLUME_BYTES = 64 * 1024 * 1024
RPC_TIMEOUT_S = 30.0
START_TIMEOUT_S = 20.0
DEFAULT_KUBELET_DIR = "/var/lib/kubelet"
# Each client's channel gets its own connection: by default gRPC shares one connection among channels
# with the same target and options, and "16 clients" would then be 16 streams on one socket.
OWN_CONNECTION = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
Mode = csi.VolumeCapability.AccessMode
CAPABILITY = csi.VolumeCapability(mount=csi.VolumeCapability.MountVolume(fs_type="ext4"),
                                  access_mode=Mode(mode=Mode.SINGLE_NODE_WRITER))


class SpawnedCsiPlugin(SpawnedEmulator):
    """``kubeharness csi serve`` in a subprocess, in emulated mode, everything it writes under ``root``."""

    what = "the CSI plugin"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.socket = root / "csi.sock"
        self.kubelet_dir = root / "kubelet"
        self.config_path = root / "csi.yaml"
        self.log_path = root / "plugin.log"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "kubeharness.cli", "csi", "serve", "--endpoint", self.endpoint,
                "--state-dir", str(self.state_dir), "--config", str(self.config_path), "--mode", "emulated"]

    def start(self) -> None:
        self.kubelet_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(f"roots: [{str(self.kubelet_dir)!r}]\n")
        super().start()

    async def wait_ready(self, timeout_s: float) -> None:
        """Poll Identity.Probe until it answers ready; a clear BenchError if the plugin exits or stays silent."""
        assert self.process is not None, "the plugin was not started"
        deadline = time.perf_counter_ns() + int(timeout_s * 1e9)
        async with grpc.aio.insecure_channel(grpc_target(self.endpoint), options=OWN_CONNECTION) as channel:
            identity = csi_grpc.IdentityStub(channel)
            while time.perf_counter_ns() < deadline:
                if self.process.poll() is not None:
                    raise BenchError(f"{self.what} exited with code {self.process.returncode} before it "
                                     f"answered; the end of its log {self.log_path}:\n{self.log_tail()}")
                try:
                    if (await identity.Probe(csi.ProbeRequest(), timeout=0.5)).ready.value:
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.05)
        raise BenchError(f"{self.what} did not answer Probe with ready on {self.socket} within {timeout_s:g} s; "
                         f"the end of its log {self.log_path}:\n{self.log_tail()}")


class CsiClient(TimedClient):
    """The CSI services of one channel, every call timed into a Recorder."""

    def __init__(self, channel: grpc.aio.Channel, recorder: Recorder, timeout_s: float = RPC_TIMEOUT_S) -> None:
        super().__init__(channel, recorder, timeout_s)
        self.identity = csi_grpc.IdentityStub(channel)
        self.controller = csi_grpc.ControllerStub(channel)
        self.node = csi_grpc.NodeStub(channel)


@dataclass(frozen=True)
class BenchVolume:
    """One volume of the run and where the benchmark stages and publishes it."""

    name: str
    staging: str
    target: str
    volume_id: str = ""


@dataclass
class Phase:
    """The samples and counts of one timed phase."""

    title: str
    clients: int
    recorder: Recorder
    cycles: int = 0
    failed_cycles: int = 0
    wall_ns: int = 0
    server_cpu_s: float | None = None

    @property
    def calls(self) -> int:
        return sum(len(s) for s in self.recorder.samples.values()) + self.recorder.failure_count


def plan_volumes(kubelet_dir: Path, run: str, count: int) -> list[BenchVolume]:
    """Names and kubelet-like paths of ``count`` volumes (a pod of their own each)."""
    volumes = []
    for index in range(count):
        name = f"bench-{run}-{index}"
        staging = kubelet_dir / "plugins" / "kubernetes.io" / "csi" / "bench" / name / "globalmount"
        target = kubelet_dir / "pods" / f"pod-{run}-{index}" / "volumes" / "kubernetes.io~csi" / name / "mount"
        volumes.append(BenchVolume(name, str(staging), str(target)))
    return volumes


def open_connection(endpoint: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(grpc_target(endpoint), options=OWN_CONNECTION)


async def cycle(client: CsiClient, volume: BenchVolume, record: bool = True) -> bool:
    """Stage, publish, unpublish, unstage; stops at the first failed call (which the recorder counts)."""
    node, vid = client.node, volume.volume_id
    return (
        await client.call("NodeStageVolume", node.NodeStageVolume, csi.NodeStageVolumeRequest(
            volume_id=vid, staging_target_path=volume.staging, volume_capability=CAPABILITY), record=record) is not None
        and await client.call("NodePublishVolume", node.NodePublishVolume, csi.NodePublishVolumeRequest(
            volume_id=vid, staging_target_path=volume.staging, target_path=volume.target,
            volume_capability=CAPABILITY), record=record) is not None
        and await client.call("NodeUnpublishVolume", node.NodeUnpublishVolume, csi.NodeUnpublishVolumeRequest(
            volume_id=vid, target_path=volume.target), record=record) is not None
        and await client.call("NodeUnstageVolume", node.NodeUnstageVolume, csi.NodeUnstageVolumeRequest(
            volume_id=vid, staging_target_path=volume.staging), record=record) is not None
    )


async def set_up(client: CsiClient, volumes: list[BenchVolume], node_id: str) -> list[BenchVolume]:
    """Create each volume and publish it to ``node_id``; the volumes with their ids (failures recorded)."""
    ready = []
    for volume in volumes:
        created = await client.call("CreateVolume", client.controller.CreateVolume, csi.CreateVolumeRequest(
            name=volume.name, capacity_range=csi.CapacityRange(required_bytes=VOLUME_BYTES),
            volume_capabilities=[CAPABILITY]))
        volume_id = created.volume.volume_id if created is not None else volume.name
        await client.call("ControllerPublishVolume", client.controller.ControllerPublishVolume,
                          csi.ControllerPublishVolumeRequest(volume_id=volume_id, node_id=node_id,
                                                             volume_capability=CAPABILITY))
        ready.append(BenchVolume(volume.name, volume.staging, volume.target, volume_id))
    return ready


async def clean_up(client: CsiClient, volumes: list[BenchVolume], node_id: str) -> None:
    """Undo everything, whatever state a failed cycle left a volume in (each step is idempotent)."""
    for v in volumes:
        await client.call("NodeUnpublishVolume", client.node.NodeUnpublishVolume,
                          csi.NodeUnpublishVolumeRequest(volume_id=v.volume_id, target_path=v.target))
        await client.call("NodeUnstageVolume", client.node.NodeUnstageVolume,
                          csi.NodeUnstageVolumeRequest(volume_id=v.volume_id, staging_target_path=v.staging))
        await client.call("ControllerUnpublishVolume", client.controller.ControllerUnpublishVolume,
                          csi.ControllerUnpublishVolumeRequest(volume_id=v.volume_id, node_id=node_id))
        await client.call("DeleteVolume", client.controller.DeleteVolume,
                          csi.DeleteVolumeRequest(volume_id=v.volume_id))


def shares(cycles: int, clients: int) -> list[int]:
    """``cycles`` split over ``clients`` as evenly as possible: 10 over 4 -> [3, 3, 2, 2]."""
    return [cycles // clients + (1 if i < cycles % clients else 0) for i in range(clients)]


def cpu_s(pid: int | None) -> float | None:
    found = sample(pid) if pid is not None else None
    return found.cpu_s if found is not None else None


async def run_phase(endpoint: str, phase: Phase, work: list[list[BenchVolume]], pid: int | None) -> None:
    """Client ``i`` cycles the volumes of ``work[i]`` in order, each client on a connection of its own."""
    channels = [open_connection(endpoint) for _ in work]
    try:
        await asyncio.gather(*(connect(ch, endpoint, RPC_TIMEOUT_S) for ch in channels))

        async def client_loop(channel: grpc.aio.Channel, volumes: list[BenchVolume]) -> list[bool]:
            client = CsiClient(channel, phase.recorder)
            return [await cycle(client, v) for v in volumes]

        cpu_before = cpu_s(pid)
        start = time.perf_counter_ns()
        results = await asyncio.gather(*(client_loop(ch, vs) for ch, vs in zip(channels, work, strict=True)))
        phase.wall_ns = time.perf_counter_ns() - start
        cpu_after = cpu_s(pid)
    finally:
        await asyncio.gather(*(ch.close(None) for ch in channels))
    outcomes = [ok for result in results for ok in result]
    phase.cycles, phase.failed_cycles = sum(outcomes), outcomes.count(False)
    if cpu_before is not None and cpu_after is not None:
        phase.server_cpu_s = cpu_after - cpu_before


def phase_lines(phase: Phase) -> list[str]:
    clients = f"{phase.clients} client{'s' if phase.clients != 1 else ''}"
    calls_per_s = rate_per_second(phase.calls, phase.wall_ns)
    lines = [f"{phase.title}: {phase.cycles} cycles ({phase.failed_cycles} failed) with {clients} in "
             f"{phase.wall_ns / 1e9:.2f} s = {rate_per_second(phase.cycles, phase.wall_ns):.1f} cycles/s, "
             f"{calls_per_s:.1f} calls/s",
             f"  {'RPC':<20} {'count':>7} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}"]
    every: list[int] = []
    for rpc in CYCLE_RPCS:
        samples = phase.recorder.samples.get(rpc, [])
        every += samples
        s = summarize(samples)
        lines.append(f"  {rpc:<20} {s.count:>7} {s.p50_ms:>9.3f} {s.p99_ms:>9.3f} {s.max_ms:>9.3f}")
    s = summarize(every)
    lines.append(f"  {'every call':<20} {s.count:>7} {s.p50_ms:>9.3f} {s.p99_ms:>9.3f} {s.max_ms:>9.3f}")
    if phase.server_cpu_s is not None and phase.calls:
        lines.append(f"  plugin CPU {phase.server_cpu_s:.2f} s = {phase.server_cpu_s * 1000 / phase.calls:.3f} ms "
                     f"per call ({phase.server_cpu_s * 1e9 / max(phase.wall_ns, 1):.0%} of a core)")
    return lines + failure_lines(phase.recorder)


def worst_p99(phase: Phase) -> tuple[float, str] | None:
    """The largest p99 of any RPC in ``phase`` (ms) and that RPC; None if no call succeeded."""
    return max(((summarize(samples).p99_ms, rpc) for rpc, samples in phase.recorder.samples.items()), default=None)


def target_line(phases: list[Phase]) -> str:
    """Whether every RPC's p99 in every phase is within the target; the worst RPC, and each phase's worst."""
    worst = {p.title.split(":")[0]: worst_p99(p) for p in phases}
    found = [(w[0], w[1], where) for where, w in worst.items() if w is not None]
    if not found:
        return f"target p99 <= {TARGET_P99_MS:g} ms per call: NOT met (no call succeeded)"
    p99, rpc, where = max(found)
    verdict = "met" if p99 <= TARGET_P99_MS and len(found) == len(phases) else "NOT met"
    each = ", ".join(f"{where} {w[0]:.3f} ms" if w else f"{where} no call succeeded" for where, w in worst.items())
    return (f"target p99 <= {TARGET_P99_MS:g} ms per call: {verdict} (worst {rpc} p99 {p99:.3f} ms in {where}; "
            f"worst per phase: {each})")


def check(options: argparse.Namespace) -> None:
    for name in ("volumes", "cycles", "concurrency"):
        if getattr(options, name) < 1:
            raise BenchError(f"--{name} must be at least 1")
    if options.warmup < 0:
        raise BenchError("--warmup must not be negative")
    if options.volumes < options.concurrency:
        raise BenchError(f"--volumes ({options.volumes}) must be at least --concurrency ({options.concurrency}): "
                         "each concurrent client cycles a volume of its own")


async def run(options: argparse.Namespace, endpoint: str, kubelet_dir: Path, pid: int | None) -> int:
    """Set up, both phases, clean up, report; the number of failed calls."""
    planned = plan_volumes(kubelet_dir, secrets.token_hex(3), options.volumes)
    setup = Recorder()
    async with open_connection(endpoint) as channel:
        await connect(channel, endpoint, START_TIMEOUT_S)
        client = CsiClient(channel, setup)
        info = await client.call("NodeGetInfo", client.node.NodeGetInfo, csi.NodeGetInfoRequest())
        if info is None:
            raise BenchError(f"{endpoint} does not answer NodeGetInfo: {next(iter(setup.failures))}")
        volumes = await set_up(client, planned, info.node_id)
        for _ in range(options.warmup):
            for volume in volumes:
                await cycle(client, volume, record=False)
        print(f"CSI benchmark of {endpoint}" + (f", plugin PID {pid} (started by the benchmark)" if pid else "")
              + f": node {info.node_id}, {len(volumes)} volumes, staging and targets under {kubelet_dir}")
        print(f"{os.cpu_count()} CPUs, Python {platform.python_version()}, grpcio {grpc.__version__}; "
              f"{options.warmup} untimed warm-up cycles per volume; times in ms as the client sees them")
        if setup.failures:
            print("\nsetup:")
            print("\n".join(failure_lines(setup)))
        serial = Phase("phase 1: serial", 1, Recorder())
        order = [volumes[i % len(volumes)] for i in range(options.cycles)]
        try:
            await run_phase(endpoint, serial, [order], pid)
            print("")
            print("\n".join(phase_lines(serial)))
            k = options.concurrency
            concurrent = Phase(f"phase 2: {k} concurrent volumes", k, Recorder())
            await run_phase(endpoint, concurrent, [[volumes[i]] * n for i, n in enumerate(shares(options.cycles, k))],
                            pid)
            print("")
            print("\n".join(phase_lines(concurrent)))
        finally:
            cleanup = Recorder()
            await clean_up(CsiClient(channel, cleanup), volumes, info.node_id)
    if cleanup.failures:
        print("\nclean-up:")
        print("\n".join(failure_lines(cleanup)))
    print("")
    print(target_line([serial, concurrent]))
    return sum(r.failure_count for r in (setup, serial.recorder, concurrent.recorder, cleanup))


async def _main(options: argparse.Namespace, root: Path) -> int:
    plugin = SpawnedCsiPlugin(root) if options.endpoint is None else None
    try:
        if plugin is not None:
            plugin.start()
            await plugin.wait_ready(START_TIMEOUT_S)
            return await run(options, plugin.endpoint, plugin.kubelet_dir, plugin.pid)
        return await run(options, options.endpoint, Path(options.kubelet_dir or DEFAULT_KUBELET_DIR), None)
    finally:
        code = plugin.stop() if plugin is not None else None
        if plugin is not None and code not in (0, None):
            print(f"note: the plugin exited with code {code}; the end of its log:\n{plugin.log_tail()}")


def main(options: argparse.Namespace) -> int:
    check(options)
    root = Path(tempfile.mkdtemp(prefix="kubeharness-bench-csi-"))
    try:
        failed = asyncio.run(_main(options, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if failed:
        print(f"{failed} calls failed")
    return 1 if failed else 0
