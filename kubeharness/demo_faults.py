"""``kubeharness demo --faults PLAN``: a fault plan at work on the CRI emulator, narrated.

It starts the emulator with the plan (through :class:`kubeharness.testing.CriEmulator`, the same Python
API users' tests get) and does what kubelet does for two pods: ``flaky``, annotated to opt in to every
opt-in rule of the plan, and ``calm``, which opts in to nothing. For each: RunPodSandbox, retried after a
failure as kubelet retries a sync (up to five attempts), PullImage of busybox with the pod's config, then
CreateContainer and StartContainer of a ``sleep``. Each call's outcome and time is printed, then the
fired-fault log as the control socket returns it. With the repository's example plan
(``examples/faults/one-pod-flaky-sandbox.yaml``) the flaky pod's sandbox fails twice with UNAVAILABLE and
its pull takes 2 s longer; the calm pod sees nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import grpc

from kubeharness.faults import OPT_IN_ANNOTATION, load_plan_file
from kubeharness.testing import CriEmulator
from kubeharness.wire.cri import api_pb2 as api
from kubeharness.wire.cri import api_pb2_grpc as api_grpc

IMAGE = "busybox:1.36"
ATTEMPTS = 5


def _say(text: str) -> None:
    print(text, flush=True)


async def _timed(what: str, call: object) -> tuple[bool, object]:
    start = time.monotonic()
    try:
        reply = await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as err:
        _say(f"    {what:<16} {err.code().name}: {err.details()}  ({time.monotonic() - start:.2f} s)")
        return False, None
    _say(f"    {what:<16} OK  ({time.monotonic() - start:.2f} s)")
    return True, reply


async def _pod(channel: grpc.aio.Channel, root: Path, name: str, opt_in: list[str]) -> None:
    rt, images = api_grpc.RuntimeServiceStub(channel), api_grpc.ImageServiceStub(channel)
    annotations = {OPT_IN_ANNOTATION: ",".join(opt_in)} if opt_in else {}
    config = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=name, namespace="demo", uid=f"uid-{name}"),
        log_directory=str(root / "pods" / name), annotations=annotations)
    _say(f"\n  pod {name}" + (f" ({OPT_IN_ANNOTATION}: {annotations[OPT_IN_ANNOTATION]})" if opt_in else ""))
    reply: object = None
    for attempt in range(1, ATTEMPTS + 1):
        ok, reply = await _timed(f"RunPodSandbox #{attempt}", rt.RunPodSandbox(api.RunPodSandboxRequest(config=config)))
        if ok:
            break
        await asyncio.sleep(0.2)  # kubelet would retry at its next sync of the pod
    if not isinstance(reply, api.RunPodSandboxResponse):
        return
    sandbox_id = reply.pod_sandbox_id
    await _timed("PullImage", images.PullImage(api.PullImageRequest(image=api.ImageSpec(image=IMAGE),
                                                                     sandbox_config=config)))
    container = api.ContainerConfig(metadata=api.ContainerMetadata(name="main"), image=api.ImageSpec(image=IMAGE),
                                    command=["sleep", "3600"], log_path="main.log")
    ok, created = await _timed("CreateContainer", rt.CreateContainer(api.CreateContainerRequest(
        pod_sandbox_id=sandbox_id, config=container, sandbox_config=config)))
    if ok and isinstance(created, api.CreateContainerResponse):
        await _timed("StartContainer", rt.StartContainer(api.StartContainerRequest(container_id=created.container_id)))


async def _main(plan: Path, root: Path) -> None:
    rules = load_plan_file(plan).rules  # a bad plan stops here, with the line named
    opt_in = [rule.name for rule in rules if rule.opt_in]
    _say(f"$ kubeharness cri serve --faults {plan} (state and logs in {root})")
    _say(f"  {len(rules)} rules: " + ", ".join(f"{r.name} ({r.where} {r.method})" for r in rules))
    async with CriEmulator(root, plan=plan, seed=1) as emulator:
        async with grpc.aio.insecure_channel(emulator.endpoint) as channel:
            await _pod(channel, root, "flaky", opt_in)
            await _pod(channel, root, "calm", [])
        fired = await emulator.async_control.fired()
    _say("\n  fired-fault log (kubeharness faults fired):")
    for entry in fired:
        _say("    " + json.dumps(entry, sort_keys=True))
    if not fired:
        _say("    (nothing fired)")


def main(args: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="kubeharness-demo-faults-"))
    asyncio.run(_main(Path(args.faults), root))
    return 0
