"""``kubeharness demo``: start the CRI emulator as a daemon and run a few pods through their lifecycle.

It is the quick look a newcomer gets: the emulator runs as its own process on a unix socket, and
everything here goes through the CRI exactly as kubelet would send it: pull, run sandbox, create,
start, exec probe, stats, crash and restart by recreation, OOM kill, a stop that must escalate to
SIGKILL, log rotation, a busybox one-liner with a file-based liveness probe, and clean-up, with the
container event stream printed alongside.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TypeVar

import grpc

from kubeharness.wire.cri import api_pb2 as api
from kubeharness.wire.cri import api_pb2_grpc as api_grpc

T = TypeVar("T")
IMAGE = "kubeharness.test/khelper:1"
MiB = 1024 * 1024
STATE_NAMES = {api.CONTAINER_CREATED: "created", api.CONTAINER_RUNNING: "running", api.CONTAINER_EXITED: "exited"}
EVENT_NAMES = {
    api.CONTAINER_CREATED_EVENT: "created",
    api.CONTAINER_STARTED_EVENT: "started",
    api.CONTAINER_STOPPED_EVENT: "stopped",
    api.CONTAINER_DELETED_EVENT: "deleted",
}


class Demo:
    def __init__(self, channel: grpc.aio.Channel, root: Path) -> None:
        self.rt = api_grpc.RuntimeServiceStub(channel)
        self.img = api_grpc.ImageServiceStub(channel)
        self.root = root
        self.names: dict[str, str] = {}  # container id -> pod/container name for the event log

    def say(self, text: str) -> None:
        print(text, flush=True)

    async def sandbox(self, name: str) -> tuple[str, api.PodSandboxConfig]:
        cfg = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name=name, namespace="demo", uid=f"uid-{name}"),
            hostname=name,
            log_directory=str(self.root / "pods" / f"demo_{name}"),
            labels={"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": "demo"},
        )
        sid = (await self.rt.RunPodSandbox(api.RunPodSandboxRequest(config=cfg))).pod_sandbox_id
        status = (await self.rt.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=sid))).status
        self.say(f"  pod {name:<9} sandbox {sid[:12]} ready, IP {status.network.ip}")
        return sid, cfg

    async def container(self, sid: str, cfg: api.PodSandboxConfig, name: str, args: list[str],
                        attempt: int = 0, memory_limit: int = 0, image: str = IMAGE,
                        command: list[str] | None = None) -> str:
        config = api.ContainerConfig(
            metadata=api.ContainerMetadata(name=name, attempt=attempt),
            image=api.ImageSpec(image=image),
            command=command or [],
            args=args,
            log_path=f"{name}/{attempt}.log",
        )
        config.linux.security_context.namespace_options.pid = api.CONTAINER  # its own PID 1, as kubelet asks
        if memory_limit:
            config.linux.resources.memory_limit_in_bytes = memory_limit
        request = api.CreateContainerRequest(pod_sandbox_id=sid, config=config, sandbox_config=cfg)
        cid = (await self.rt.CreateContainer(request)).container_id
        self.names[cid] = f"{cfg.metadata.name}/{name}#{attempt}"
        await self.rt.StartContainer(api.StartContainerRequest(container_id=cid))
        self.say(f"  {self.names[cid]:<20} started: {shlex.join(command or ['khelper', *args])}")
        return cid

    async def status(self, cid: str) -> api.ContainerStatus:
        return (await self.rt.ContainerStatus(api.ContainerStatusRequest(container_id=cid))).status

    async def report(self, cid: str) -> None:
        s = await self.status(cid)
        detail = f"exit {s.exit_code} ({s.reason})" if s.state == api.CONTAINER_EXITED else ""
        self.say(f"  {self.names[cid]:<20} {STATE_NAMES.get(s.state, '?'):<8} {detail}")

    async def events(self) -> None:
        async for event in self.rt.GetContainerEvents(api.GetEventsRequest()):
            pod = event.pod_sandbox_status.metadata.name
            if event.container_id == event.pod_sandbox_status.id:  # a sandbox event
                self.names.setdefault(event.container_id, f"{pod} (sandbox)")
            for status in event.containers_statuses:
                if status.id == event.container_id and event.container_id not in self.names:
                    self.names[status.id] = f"{pod}/{status.metadata.name}#{status.metadata.attempt}"
            name = self.names.get(event.container_id, event.container_id[:12])
            self.say(f"    event: {name} {EVENT_NAMES.get(event.container_event_type, '?')}")

    async def run(self) -> None:
        version = await self.rt.Version(api.VersionRequest())
        self.say(f"runtime {version.runtime_name} {version.runtime_version}, CRI {version.runtime_api_version}")
        watcher = asyncio.ensure_future(self.events())
        await asyncio.sleep(0.1)

        self.say("\n1. pull the test image")
        ref = (await self.img.PullImage(api.PullImageRequest(image=api.ImageSpec(image=IMAGE)))).image_ref
        self.say(f"  pulled {IMAGE} as {ref[:19]}")

        self.say("\n2. run four pods")
        web_sid, web_cfg = await self.sandbox("web")
        web = await self.container(web_sid, web_cfg, "server", ["--log-rate=4", "--ready-after=1s", "--memory-mib=40",
                                                                "--cpu-millicores=150"])
        job_sid, job_cfg = await self.sandbox("job")
        job = await self.container(job_sid, job_cfg, "task", ["--exit-after=1s", "--exit-code=0"])
        crash_sid, crash_cfg = await self.sandbox("crasher")
        crash = await self.container(crash_sid, crash_cfg, "app", ["--exit-after=500ms", "--exit-code=1"])
        hog_sid, hog_cfg = await self.sandbox("hog")
        hog = await self.container(hog_sid, hog_cfg, "leak", ["--memory-mib=512", "--memory-mib-per-second=200"],
                                   memory_limit=128 * MiB)

        self.say("\n3. an exec readiness probe before and after --ready-after")
        for _ in range(2):
            probe = await self.rt.ExecSync(api.ExecSyncRequest(container_id=web, cmd=["khelper", "check", "ready"],
                                                               timeout=1))
            said = (probe.stdout or probe.stderr).decode().strip()
            self.say(f"  khelper check ready -> exit {probe.exit_code} {said}")
            await asyncio.sleep(1.1)

        self.say("\n4. what happened after a second and a half")
        for cid in (web, job, crash, hog):
            await self.report(cid)
        stats = (await self.rt.ContainerStats(api.ContainerStatsRequest(container_id=web))).stats
        self.say(f"  web/server uses {stats.memory.working_set_bytes.value / MiB:.1f} MiB and "
                 f"{stats.cpu.usage_nano_cores.value / 1e6:.0f} millicores")

        self.say("\n5. restart the crashed container by recreation (attempt 1): the pod IP stays")
        await self.rt.RemoveContainer(api.RemoveContainerRequest(container_id=crash))
        crash = await self.container(crash_sid, crash_cfg, "app", ["--exit-after=10s"], attempt=1)
        ip = (await self.rt.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=crash_sid))).status.network.ip
        self.say(f"  crasher still has IP {ip}")

        self.say("\n6. rotate web's log the way kubelet does: rename, then ReopenContainerLog")
        log_path = (await self.status(web)).log_path
        os.rename(log_path, f"{log_path}.1")
        await self.rt.ReopenContainerLog(api.ReopenContainerLogRequest(container_id=web))
        await asyncio.sleep(0.6)
        rotated = _lines(f"{log_path}.1")
        self.say(f"  {Path(log_path).name}.1 has {len(rotated)} lines, e.g. {rotated[-1]!r}")
        self.say(f"  fresh {Path(log_path).name} has {len(_lines(log_path))} lines")

        self.say("\n7. stop a container that ignores SIGTERM: the runtime escalates to SIGKILL after 1 s")
        stubborn = await self.container(job_sid, job_cfg, "stubborn", ["--ignore-sigterm"])
        await self.rt.StopContainer(api.StopContainerRequest(container_id=stubborn, timeout=1))
        await self.report(stubborn)

        self.say("\n8. a busybox one-liner with the liveness-probe pattern, run by the shell subset")
        await self.img.PullImage(api.PullImageRequest(image=api.ImageSpec(image="busybox:1.36")))
        sh_sid, sh_cfg = await self.sandbox("shell")
        script = "echo hello from sh; touch /tmp/healthy; sleep 1; rm /tmp/healthy; echo removed it; sleep 600"
        shell = await self.container(sh_sid, sh_cfg, "probe", [], image="busybox:1.36",
                                     command=["sh", "-c", script])
        for _ in range(2):
            probe = await self.rt.ExecSync(api.ExecSyncRequest(container_id=shell, cmd=["cat", "/tmp/healthy"],
                                                               timeout=1))
            said = probe.stderr.decode().strip() or "(the file is there)"
            self.say(f"  cat /tmp/healthy -> exit {probe.exit_code} {said}")
            await asyncio.sleep(1.2)
        for line in _lines((await self.status(shell)).log_path):
            self.say(f"  log: {line}")
        self.say("  stop with a 1 s grace period: sh is PID 1 without a trap, so SIGTERM is ignored")
        await self.rt.StopContainer(api.StopContainerRequest(container_id=shell, timeout=1))
        await self.report(shell)

        self.say("\n9. stop and remove every pod")
        for sid in (web_sid, job_sid, crash_sid, hog_sid, sh_sid):
            await self.rt.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=sid))
            await self.rt.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=sid))
        left = await self.rt.ListPodSandbox(api.ListPodSandboxRequest())
        self.say(f"  sandboxes left: {len(left.items)}")
        await asyncio.sleep(0.1)
        watcher.cancel()


def _lines(path: str) -> list[str]:
    with open(path) as f:
        return f.read().splitlines()


async def _wait_ready(socket: Path, process: asyncio.subprocess.Process) -> grpc.aio.Channel:
    channel = grpc.aio.insecure_channel(f"unix://{socket}")
    for _ in range(100):
        if process.returncode is not None:
            raise RuntimeError(f"the emulator exited with code {process.returncode} before it answered")
        try:
            await api_grpc.RuntimeServiceStub(channel).Version(api.VersionRequest(), timeout=0.5)
            return channel
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"the emulator did not answer on {socket} within 10 s")


async def _main(root: Path) -> None:
    socket = root / "cri.sock"
    cmd = [sys.executable, "-m", "kubeharness.cli", "cri", "serve", "--socket", str(socket),
           "--state-dir", str(root / "state")]
    print(f"$ kubeharness cri serve --socket {socket} --state-dir {root / 'state'}", flush=True)
    log_fd = os.open(root / "emulator.log", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        process = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.DEVNULL, stderr=log_fd)
    finally:
        os.close(log_fd)
    try:
        channel = await _wait_ready(socket, process)
        async with channel:
            await Demo(channel, root).run()
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), timeout=10)
    print(f"\nemulator stopped (exit {process.returncode}); its log: {root / 'emulator.log'}")


def main(args: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="kubeharness-demo-"))
    asyncio.run(_main(root))
    return 0
