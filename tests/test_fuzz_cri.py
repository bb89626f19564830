"""Property-based fuzzing of the CRI emulator: generated requests for every RPC, among valid lifecycles.

Every RuntimeService and ImageService RPC (enumerated from the service descriptors, so a new RPC is
fuzzed without touching this file) gets requests built by :mod:`tests.protofuzz` from its descriptor,
sent over a real gRPC channel to the emulator on a real unix socket, running in-process on a virtual
clock. Ids are sometimes those of live objects, so requests reach the handlers' deep ends, not only
their "not found" answers. A stateful test interleaves them with valid RunPodSandbox / CreateContainer /
Start / Stop / Remove calls. After each step:

- the server answers (or, for calls that wait as long as the client asked, keeps waiting), never with
  INTERNAL, never with a traceback in the details;
- UNKNOWN only where containerd answers UNKNOWN too: its CRI plugin wraps every handler's error in
  ``errdefs.ToGRPC`` (``pkg/cri/server/instrumented_service.go``), which gives UNKNOWN to any error
  not of an errdefs class. That is the case for a name already reserved (``pkg/registrar``: ``name %q
  is reserved for %q``, RunPodSandbox and CreateContainer), an unknown runtime handler (RunPodSandbox),
  StartContainer of a container not in CREATED state, in a sandbox that is not running, or whose
  process cannot be started (``failed to create containerd task``), ExecSync/Exec/Attach in a
  container that is not running (``container is in ... state``) or of a program that is not there
  (``OCI runtime exec failed``), ReopenContainerLog of a container that is not running, ContainerStats
  of a container without a task (``unexpected metrics response``), PodSandboxStats and the sandbox
  stats lists when a sandbox has no cgroup path (containerd 1.6 fails the whole list), and a pull the
  registry refuses for its credentials. :data:`CONTAINERD_UNKNOWN` lists exactly these message forms;
- the List calls are consistent: every listed sandbox, container and image has the same state in its
  Status call and is found by an id filter; every container belongs to a listed sandbox (RemovePodSandbox
  removes its containers, in containerd as here); no two ready sandboxes share a pod IP; a failed call
  left no object behind nor took one away;
- nothing was written outside the emulator's root (state directory, log directory, volume directory),
  whatever ``..`` paths the requests held: the fuzzed log directories and mount host paths are kept under
  that root (the emulator, like containerd, writes where the kubelet says, and these tests run as root),
  and the tree around the root is compared before and after.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from kubeharness.clock import VirtualClock
from kubeharness.emulators.cri.config import CriConfig
from kubeharness.emulators.cri.service import ImageService, RuntimeService
from kubeharness.wire.cri import api_pb2 as api
from tests.conftest import CriHarness
from tests.protofuzz import hostile_paths, hostile_strings, message_strategy, string_overrides

SERVICES = ("RuntimeService", "ImageService")


@dataclass(frozen=True)
class Rpc:
    """One RPC of the CRI, as its descriptor describes it."""

    service: str
    name: str
    request: type[Message]
    streaming: bool


def all_rpcs() -> tuple[Rpc, ...]:
    from google.protobuf import message_factory

    found: list[Rpc] = []
    for service in SERVICES:
        method: MethodDescriptor
        for method in api.DESCRIPTOR.services_by_name[service].methods:
            found.append(Rpc(service, method.name, message_factory.GetMessageClass(method.input_type),
                             method.server_streaming))
    return tuple(found)


RPCS = all_rpcs()
BY_NAME = {rpc.name: rpc for rpc in RPCS}

CGROUPLESS = r"^failed getting metrics for sandbox .*cgroupPath is empty$"
# Where UNKNOWN is containerd's answer too (see the module docstring): RPC -> the message forms.
CONTAINERD_UNKNOWN: dict[str, tuple[str, ...]] = {
    "RunPodSandbox": (r"^failed to reserve sandbox name ", r"^failed to get sandbox runtime: no runtime for "),
    "CreateContainer": (r"^failed to reserve container name ",),
    "StartContainer": (r"^failed to set starting state for container ", r"^sandbox container .* is not running$",
                       r"^failed to create containerd task: "),
    "ReopenContainerLog": (r"^container is not running$",),  # pkg/cri/server/container_log_reopen.go
    "ExecSync": (r"^failed to exec in container: ",),
    "Exec": (r"^failed to exec in container: ",),
    "Attach": (r"^failed to exec in container: ",),
    "ContainerStats": (r"^unexpected metrics response: \[\]$",),
    # containerd 1.6 reads sandbox metrics from the cgroup: a sandbox without cgroup_parent fails them,
    # and its ListPodSandboxStats fails as a whole (pkg/cri/server/sandbox_stats_list.go)
    "PodSandboxStats": (CGROUPLESS,),
    "ListPodSandboxStats": (CGROUPLESS,),
    "StreamPodSandboxStats": (CGROUPLESS,),
    "PullImage": (r"^failed to pull and unpack image .*authorization failed",),
}
# What RESOURCE_EXHAUSTED may say: the runtime ran out of something (not a status the transport made up).
OUT_OF = (r"^no free pod address left in ", r"no space left on device", r"^container event subscriber fell ")
# RPCs that may still be waiting when the test stops waiting: they wait as long as the request asks
# (a stop timeout, an exec timeout or a sleeping exec command), or forever (the event stream).
MAY_WAIT = {"StopContainer", "ExecSync", "StopPodSandbox", "RemoveContainer", "RemovePodSandbox",
            "GetContainerEvents"}
# A failed call of these may legitimately change what List shows: a failed start leaves the container
# EXITED with StartError, as containerd does.
FAILURE_CHANGES_STATE = {"StartContainer"}

VIRTUAL_WAIT_S = 900.0  # how much virtual time a call may take before the test gives up on it
REAL_WAIT_S = 30.0  # how long (real time) a call that does not wait on the clock may take on a loaded machine
STREAM_ITEMS = 50  # how many items of a stream are read at most

IMAGES = ("kubeharness.test/khelper:1", "docker.io/library/busybox:1.36", "kubeharness.test/app:1",
          "kubeharness.test/private:1", "kubeharness.test/missing:1", "registry.k8s.io/pause:3.10")


# -- what the generated requests may refer to --------------------------------------------------------


@dataclass
class Live:
    """The live objects and the root of the harness the current example runs against; the overrides
    below read it when they draw, so one set of strategies serves every example."""

    root: Path = Path("/nonexistent")
    sandboxes: list[str] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)

    def pick(self, kind: str, index: int) -> str:
        items: list[str] = getattr(self, kind)
        return items[index % len(items)] if items else ""


LIVE = Live()


def _live(kind: str) -> st.SearchStrategy[str]:
    return st.integers(min_value=0, max_value=64).map(lambda i: LIVE.pick(kind, i))


def _under_root(sub: str) -> st.SearchStrategy[str]:
    """A hostile path below one directory of the harness root (never an absolute path elsewhere)."""
    return hostile_paths().map(lambda p: f"{LIVE.root / sub}/{p}")


def _ids(*kinds: str) -> st.SearchStrategy[str]:
    """Mostly a live object's id (three draws in four), else anything."""
    live = st.one_of(*(_live(k) for k in kinds))
    return st.one_of(live, live, live, hostile_strings())


# ids, by name, for the string fields of those names (the List filters' ``id`` is either kind)
IDS: dict[str, st.SearchStrategy[Any]] = {"pod_sandbox_id": _ids("sandboxes"), "container_id": _ids("containers"),
                                          "id": _ids("sandboxes", "containers")}
OVERRIDES: dict[str, st.SearchStrategy[Any]] = {
    "ImageSpec.image": st.one_of(st.sampled_from(IMAGES), _live("images"), hostile_strings()),
    # paths the emulator writes to: below the root, with every '..' form the path strategy has
    "log_directory": st.one_of(st.just(""), _under_root("pods"),
                               hostile_paths().filter(lambda p: not p.startswith("/"))),
    "host_path": st.one_of(st.just(""), _under_root("volumes")),
    # a real kubelet sends one of the configured handlers; others are refused
    "runtime_handler": st.sampled_from(["", "runc", "kata", "\x00", "x" * 300]),
}

def _sometimes(*plausible: Any) -> st.SearchStrategy[Any]:
    """One of the plausible values, or anything hostile: so that requests often pass validation and
    reach the handlers' later steps."""
    return st.one_of(st.sampled_from(plausible), hostile_strings())


# Dotted paths force their parents to be set: these make the required fields present and often valid.
PLAUSIBLE: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "RunPodSandbox": {"config.metadata.name": _sometimes("a", "b", "live"),
                      "config.metadata.namespace": _sometimes("default", "ns"),
                      "config.metadata.uid": _sometimes("u1", "uid-live")},
    "CreateContainer": {"config.metadata.name": _sometimes("x", "running", "new"),
                        "config.image.image": st.one_of(st.sampled_from(IMAGES), hostile_strings()),
                        "config.log_path": st.one_of(st.just("c/0.log"), hostile_paths())},
    "ExecSync": {"cmd": st.one_of(
        st.sampled_from([["true"], ["false"], ["sleep", "3"], ["echo", "x"], ["khelper", "check", "ready"],
                         ["sh", "-c", "echo x > /tmp/x; cat /tmp/x"], ["sh", "-c", "echo x > ../../../../../x"],
                         ["sh", "-c", "mkdir -p /a/../../b && echo y > /b/c"], ["sh", "-c", "ls /proc/self/root/.."],
                         ["sh", "-c", "rm -rf /etc; echo z > /../../etc/x"], ["nope"]]),
        st.lists(hostile_strings(), max_size=3)),
        "timeout": st.sampled_from([0, 1, 5, -1, 2**63 - 1])},
    "StopContainer": {"timeout": st.sampled_from([0, 1, 30, -1, 2**63 - 1, -(2**63)])},
}

REQUESTS = {rpc.name: message_strategy(rpc.request, overrides={
    **string_overrides(rpc.request, IDS), **OVERRIDES, **PLAUSIBLE.get(rpc.name, {})}) for rpc in RPCS}


# -- running calls against the emulator --------------------------------------------------------------


@dataclass
class Outcome:
    """How one call ended: a status code (OK when it answered) or ``None`` when it was still waiting."""

    rpc: str
    code: grpc.StatusCode | None
    details: str = ""
    response: Any = None


class Fuzzer:
    """One emulator on a real socket in its own root, driven from synchronous hypothesis code."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.base = Path(tempfile.mkdtemp(prefix="khfuzz-"))
        self.root = self.base / "around" / "cri"
        (self.root / "pods").mkdir(parents=True)
        (self.root / "volumes").mkdir()
        self.harness = CriHarness(root=self.root, clock=VirtualClock(), config=CriConfig())
        self.run(self.harness.start())
        self.outside_before = self.outside()
        LIVE.root = self.root
        self.refresh()

    def close(self) -> None:
        try:
            self.run(self.harness.stop())
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def run(self, coro: Awaitable[Any]) -> Any:
        return self.loop.run_until_complete(coro)

    def outside(self) -> set[str]:
        """Every path under the base directory but outside the emulator's root."""
        found: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(self.base):
            if Path(dirpath) == self.root.parent:
                dirnames[:] = [d for d in dirnames if d != self.root.name]
            found.update(os.path.join(dirpath, n) for n in dirnames + filenames)
        return found

    # -- calls --

    def stub(self, rpc: Rpc) -> Any:
        return getattr(self.harness.runtime if rpc.service == "RuntimeService" else self.harness.images, rpc.name)

    async def _settle(self, task: asyncio.Future[Any]) -> bool:
        """Wait for ``task``: a little real time, then advancing the virtual clock in growing steps, then
        real time again; False if it is still running after all that."""
        await asyncio.wait({task}, timeout=0.02)
        step, advanced = 0.05, 0.0
        while not task.done() and advanced < VIRTUAL_WAIT_S:
            await self.harness.clock.advance(step)
            advanced += step
            step = min(step * 2, 60.0)
            await asyncio.wait({task}, timeout=0.005)
        if not task.done():
            await asyncio.wait({task}, timeout=REAL_WAIT_S if advanced < VIRTUAL_WAIT_S else 0.05)
        return task.done()

    async def _call(self, rpc: Rpc, request: Message) -> Outcome:
        call = self.stub(rpc)(request)
        collect = asyncio.ensure_future(self._read_stream(call) if rpc.streaming else call)
        done = await self._settle(collect)
        if not done:
            collect.cancel()
            if rpc.streaming:
                call.cancel()
            await asyncio.gather(collect, return_exceptions=True)
            return Outcome(rpc.name, None)
        try:
            return Outcome(rpc.name, grpc.StatusCode.OK, response=collect.result())
        except grpc.aio.AioRpcError as err:
            return Outcome(rpc.name, err.code(), str(err.details()))

    async def _read_stream(self, call: AsyncIterator[Any]) -> list[Any]:
        items: list[Any] = []
        async for item in call:
            items.append(item)
            if len(items) >= STREAM_ITEMS:
                call.cancel()  # type: ignore[attr-defined]
                break
        return items

    def call(self, rpc: Rpc, request: Message) -> Outcome:
        outcome: Outcome = self.run(self._call(rpc, request))
        return outcome

    def fire(self, rpc: Rpc, request: Message) -> Outcome:
        """Send a generated request and check everything the module docstring promises."""
        before = self.run(self.identities())
        outcome = self.call(rpc, request)
        check_outcome(outcome)
        self.run(self.check_consistent())
        if outcome.code not in (grpc.StatusCode.OK, None) and rpc.name not in FAILURE_CHANGES_STATE:
            after = self.run(self.identities())
            assert after == before, f"the failed {rpc.name} ({outcome.code}: {outcome.details[:200]}) changed the state"
        self.refresh()
        return outcome

    def refresh(self) -> None:
        """Note the live objects, for the next requests to pick their ids from."""
        sandboxes, containers, images = self.run(self.lists())
        LIVE.sandboxes = [s.id for s in sandboxes]
        LIVE.containers = [c.id for c in containers]
        LIVE.images = [i.id for i in images] + [t for i in images for t in i.repo_tags]

    # -- invariants --

    async def lists(self) -> tuple[list[api.PodSandbox], list[api.Container], list[api.Image]]:
        r, i = self.harness.runtime, self.harness.images
        sandboxes = (await r.ListPodSandbox(api.ListPodSandboxRequest())).items
        containers = (await r.ListContainers(api.ListContainersRequest())).containers
        images = (await i.ListImages(api.ListImagesRequest())).images
        return list(sandboxes), list(containers), list(images)

    async def identities(self) -> tuple[set[tuple[str, int]], set[str], set[str]]:
        """What a failed call must not change: sandboxes (with state), container ids, image ids. Container
        states may change while the clock runs, so they are not part of it."""
        sandboxes, containers, images = await self.lists()
        return {(s.id, s.state) for s in sandboxes}, {c.id for c in containers}, {i.id for i in images}

    async def check_consistent(self) -> None:
        r, i = self.harness.runtime, self.harness.images
        sandboxes, containers, images = await self.lists()
        sandbox_ids = [s.id for s in sandboxes]
        assert len(set(sandbox_ids)) == len(sandbox_ids), "a sandbox is listed twice"
        ips: dict[str, str] = {}
        for sb in sandboxes:
            status = (await r.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=sb.id))).status
            assert (status.id, status.state, status.metadata) == (sb.id, sb.state, sb.metadata)
            listed = await r.ListPodSandbox(api.ListPodSandboxRequest(filter=api.PodSandboxFilter(id=sb.id)))
            assert [s.id for s in listed.items] == [sb.id]
            if sb.state == api.SANDBOX_READY and status.network.ip:
                ip = status.network.ip
                assert ip not in ips, f"{ip} given to both {ips.get(ip)} and {sb.id}"
                ips[status.network.ip] = sb.id
        container_ids = [c.id for c in containers]
        assert len(set(container_ids)) == len(container_ids), "a container is listed twice"
        for c in containers:
            assert c.pod_sandbox_id in sandbox_ids, f"container {c.id} outlived its sandbox {c.pod_sandbox_id}"
            c_status = (await r.ContainerStatus(api.ContainerStatusRequest(container_id=c.id))).status
            assert c_status.id == c.id and c_status.metadata == c.metadata and c_status.image_id == c.image_id
            # the state only moves forward between the two calls (a container may exit meanwhile)
            assert c_status.state >= c.state, (c.state, c_status.state)
        listed_stats = (await r.ListContainerStats(api.ListContainerStatsRequest())).stats
        assert {s.attributes.id for s in listed_stats} <= set(container_ids)
        try:
            sandbox_stats = (await r.ListPodSandboxStats(api.ListPodSandboxStatsRequest())).stats
        except grpc.aio.AioRpcError as err:  # a sandbox without a cgroup fails it, as in containerd 1.6
            assert err.code() == grpc.StatusCode.UNKNOWN and re.search(CGROUPLESS, str(err.details())), err
        else:
            assert {s.attributes.id for s in sandbox_stats} <= set(sandbox_ids)
        for image in images:
            found = (await i.ImageStatus(api.ImageStatusRequest(image=api.ImageSpec(image=image.id)))).image
            assert found.id == image.id and list(found.repo_tags) == list(image.repo_tags)
        runtime_status = (await r.Status(api.StatusRequest())).status
        assert {c.type: c.status for c in runtime_status.conditions}.get("RuntimeReady") is True

    def check_nothing_outside(self) -> None:
        written = self.outside() - self.outside_before
        assert not written, f"written outside the emulator's root: {sorted(written)[:10]}"


def check_outcome(outcome: Outcome) -> None:
    """Never INTERNAL, UNKNOWN only as containerd, RESOURCE_EXHAUSTED only when out of something, no
    traceback, a bounded message, waiting only where allowed."""
    if outcome.code is None:
        assert outcome.rpc in MAY_WAIT, f"{outcome.rpc} never answered"
        return
    details = outcome.details
    assert outcome.code != grpc.StatusCode.INTERNAL, f"{outcome.rpc}: INTERNAL: {details[:500]}"
    assert "Traceback" not in details and 'File "' not in details, details[:500]
    assert len(details) <= 16 * 1024, f"{outcome.rpc}: a {len(details)}-character message"
    if outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED:  # only what the runtime ran out of
        assert any(re.search(p, details) for p in OUT_OF), f"{outcome.rpc}: RESOURCE_EXHAUSTED: {details[:500]}"
    if outcome.code == grpc.StatusCode.UNKNOWN:
        allowed = CONTAINERD_UNKNOWN.get(outcome.rpc, ())
        assert any(re.search(p, details, re.S) for p in allowed), f"{outcome.rpc}: UNKNOWN: {details[:500]}"


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """The event loop the synchronous hypothesis tests run the emulator and its clients on."""
    new = asyncio.new_event_loop()
    try:
        yield new
    finally:
        new.close()


# -- the RPC list is complete ------------------------------------------------------------------------


def test_every_rpc_of_both_services_is_fuzzed_and_served() -> None:
    expected = {m.name for s in SERVICES for m in api.DESCRIPTOR.services_by_name[s].methods}
    assert {rpc.name for rpc in RPCS} == expected == set(REQUESTS)
    assert len(RPCS) == len(expected), "an RPC name appears in both services"
    for rpc in RPCS:
        servicer = RuntimeService if rpc.service == "RuntimeService" else ImageService
        assert callable(getattr(servicer, rpc.name, None)), f"{rpc.service}/{rpc.name} has no handler"
    for named in (set(CONTAINERD_UNKNOWN), set(PLAUSIBLE), MAY_WAIT, FAILURE_CHANGES_STATE):
        assert named <= expected, named - expected
    assert {rpc.name for rpc in RPCS if rpc.streaming} >= {"GetContainerEvents", "StreamPodSandboxes",
                                                          "StreamContainers", "StreamImages"}


# -- each RPC on its own, against a node with live objects -------------------------------------------

# a sixth of the profile's examples for each RPC (10 under ``ci``), a third for each stateful run
PER_RPC_EXAMPLES = max(1, settings().max_examples // 6)
LIFECYCLE_EXAMPLES = max(1, settings().max_examples // 3)


def populate(fz: Fuzzer) -> None:
    """A running pod with a running container, an exited one and a created one; a pod that is stopped."""
    h = fz.harness

    async def go() -> None:
        await h.pull("kubeharness.test/khelper:1")
        await h.pull("docker.io/library/busybox:1.36")
        cfg = h.sandbox_config(name="live")
        sid = await h.run_sandbox(cfg)
        for name in ("running", "exited", "created"):
            cid = await h.create(sid, cfg, name=name)
            if name != "created":
                await h.start_container(cid)
            if name == "exited":
                await h.runtime.StopContainer(api.StopContainerRequest(container_id=cid, timeout=0))
        stopped = await h.run_sandbox(h.sandbox_config(name="stopped"))
        await h.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=stopped))

    fz.run(go())
    fz.refresh()


@pytest.mark.parametrize("rpc", RPCS, ids=[rpc.name for rpc in RPCS])
def test_generated_requests_for_each_rpc(rpc: Rpc, loop: asyncio.AbstractEventLoop) -> None:
    fz = Fuzzer(loop)
    try:
        populate(fz)
        codes: list[grpc.StatusCode | None] = []

        @settings(max_examples=PER_RPC_EXAMPLES)
        @given(request=REQUESTS[rpc.name])
        def fire(request: Message) -> None:
            codes.append(fz.fire(rpc, request).code)

        fire()
        assert codes, "no request reached the server"
        if os.environ.get("KUBEHARNESS_FUZZ_REPORT"):
            print(rpc.name, sorted(Counter(str(c) for c in codes).items()))
        fz.check_nothing_outside()
    finally:
        fz.close()


# -- generated requests among valid lifecycles -------------------------------------------------------

CONTAINER_ARGS: tuple[list[str], ...] = ([], ["--exit-after=3s"], ["--ignore-sigterm"], ["--log-rate=2"],
                                         ["--exit-after=1s", "--exit-code=3"])


class CriLifecycles(RuleBasedStateMachine):
    """Valid pod lifecycles with generated requests to any RPC in between."""

    loop: asyncio.AbstractEventLoop  # set by the test before the machine runs

    def __init__(self) -> None:
        super().__init__()
        self.fz = Fuzzer(self.loop)
        self.h = self.fz.harness
        self.configs: dict[str, api.PodSandboxConfig] = {}
        self.counter = 0

    def teardown(self) -> None:
        try:
            self.fz.check_nothing_outside()
        finally:
            self.fz.close()

    def valid(self, rpc: str, request: Message) -> Outcome:
        outcome = self.fz.fire(BY_NAME[rpc], request)
        return outcome

    @initialize()
    def pull(self) -> None:
        self.fz.run(self.h.pull("kubeharness.test/khelper:1"))
        self.fz.refresh()

    @rule(name=st.sampled_from(["a", "b", "c"]), host_network=st.booleans())
    def run_sandbox(self, name: str, host_network: bool) -> None:
        cfg = self.h.sandbox_config(name=name, host_network=host_network)
        outcome = self.valid("RunPodSandbox", api.RunPodSandboxRequest(config=cfg))
        if outcome.code == grpc.StatusCode.OK:
            self.configs[outcome.response.pod_sandbox_id] = cfg
        else:  # the name is taken by a sandbox that is still there
            assert outcome.code == grpc.StatusCode.UNKNOWN and "is reserved for" in outcome.details

    @precondition(lambda self: bool(LIVE.sandboxes))
    @rule(data=st.data(), name=st.sampled_from(["x", "y"]), args=st.sampled_from(CONTAINER_ARGS))
    def create_container(self, data: st.DataObject, name: str, args: list[str]) -> None:
        sid = data.draw(st.sampled_from(LIVE.sandboxes), label="sandbox")
        cfg = self.configs.get(sid) or self.h.sandbox_config()
        self.counter += 1
        ccfg = api.ContainerConfig(metadata=api.ContainerMetadata(name=name, attempt=self.counter),
                                   image=api.ImageSpec(image="kubeharness.test/khelper:1"), args=args,
                                   log_path=f"{name}/{self.counter}.log")
        outcome = self.valid("CreateContainer",
                             api.CreateContainerRequest(pod_sandbox_id=sid, config=ccfg, sandbox_config=cfg))
        if outcome.code != grpc.StatusCode.OK:  # the sandbox is not ready, or is not ours (then its config differs)
            assert outcome.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNKNOWN), outcome

    @precondition(lambda self: bool(LIVE.containers))
    @rule(data=st.data(), verb=st.sampled_from(["StartContainer", "StopContainer", "RemoveContainer"]),
          timeout=st.sampled_from([0, 2, 30]))
    def container_verb(self, data: st.DataObject, verb: str, timeout: int) -> None:
        cid = data.draw(st.sampled_from(LIVE.containers), label="container")
        request: Message
        if verb == "StartContainer":
            request = api.StartContainerRequest(container_id=cid)
        elif verb == "StopContainer":
            request = api.StopContainerRequest(container_id=cid, timeout=timeout)
        else:
            request = api.RemoveContainerRequest(container_id=cid)
        outcome = self.valid(verb, request)
        if verb != "StartContainer":  # stop and remove are idempotent for a known container
            assert outcome.code == grpc.StatusCode.OK, outcome

    @precondition(lambda self: bool(LIVE.sandboxes))
    @rule(data=st.data(), verb=st.sampled_from(["StopPodSandbox", "RemovePodSandbox"]))
    def sandbox_verb(self, data: st.DataObject, verb: str) -> None:
        sid = data.draw(st.sampled_from(LIVE.sandboxes), label="sandbox")
        request = (api.StopPodSandboxRequest(pod_sandbox_id=sid) if verb == "StopPodSandbox"
                   else api.RemovePodSandboxRequest(pod_sandbox_id=sid))
        outcome = self.valid(verb, request)
        assert outcome.code == grpc.StatusCode.OK, outcome
        if verb == "RemovePodSandbox":
            assert sid not in LIVE.sandboxes

    @rule(seconds=st.sampled_from([0.5, 2.0, 10.0]))
    def time_passes(self, seconds: float) -> None:
        self.fz.run(self.h.clock.advance(seconds))
        self.fz.run(self.fz.check_consistent())
        self.fz.refresh()

    @rule(data=st.data(), rpc=st.sampled_from(RPCS))
    def generated(self, data: st.DataObject, rpc: Rpc) -> None:
        request = data.draw(REQUESTS[rpc.name], label="request")
        self.fz.fire(rpc, request)


def test_generated_requests_among_valid_lifecycles(loop: asyncio.AbstractEventLoop) -> None:
    CriLifecycles.loop = loop
    run = CriLifecycles.TestCase
    run.settings = settings(max_examples=LIFECYCLE_EXAMPLES, stateful_step_count=20)
    run().runTest()


# -- regressions: what the fuzzer found, as plain tests ----------------------------------------------


@pytest.mark.parametrize("huge", ["x" * 65536, "\u00e9" * 65536, "\U0001f600" * 16384])
async def test_an_error_that_echoes_a_huge_value_keeps_its_code(cri: CriHarness, huge: str) -> None:
    """Found by fuzzing UpdateRuntimeConfig: the message quoted the whole 64 KiB pod CIDR and the client got
    RESOURCE_EXHAUSTED (trailing metadata over gRPC's 16 KiB limit) instead of INVALID_ARGUMENT."""
    request = api.UpdateRuntimeConfigRequest(
        runtime_config=api.RuntimeConfig(network_config=api.NetworkConfig(pod_cidr=huge)))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await cri.runtime.UpdateRuntimeConfig(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    details = str(info.value.details())
    assert details.startswith("runtime_config.network_config.pod_cidr ") and "more characters)" in details
    # the pod CIDR did not change: the next sandbox gets the default pool's first address
    sid = await cri.run_sandbox()
    status = await cri.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=sid))
    assert status.status.network.ip == "127.77.0.2"


async def test_a_long_multibyte_log_directory_is_refused_with_its_code(cri: CriHarness) -> None:
    """The same limit through a message that echoes at most 4,096 characters: in 2-byte characters that
    were 36 KiB of percent-encoded trailer."""
    cfg = cri.sandbox_config(name="long")
    cfg.log_directory = "\u00e9" * 4000
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await cri.runtime.RunPodSandbox(api.RunPodSandboxRequest(config=cfg))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert "config.log_directory" in str(info.value.details())
