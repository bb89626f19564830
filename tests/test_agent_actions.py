"""computePodActions, branch by branch, over hand-built observed pods."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from kubeharness.agent.pleg.observed import (
    CREATED,
    EXITED,
    NOTREADY,
    READY,
    RUNNING,
    UNKNOWN,
    ObservedContainer,
    ObservedPod,
    ObservedSandbox,
)
from kubeharness.agent.pod.model import ALWAYS, NEVER, ON_FAILURE, Container, ExecAction, Pod, PodSpec, Probe
from kubeharness.agent.runtime.actions import (
    CRASH_LOOP_BACK_OFF,
    PodActions,
    any_app_container_created,
    backoff_entry,
    compute_pod_actions,
    sandbox_changed,
)
from kubeharness.agent.runtime.backoff import Backoff
from kubeharness.clock import NS_PER_SECOND

S = NS_PER_SECOND
NOW = 1_000 * S


def make_pod(*names: str, init: tuple[str, ...] = (), policy: str = ALWAYS, host_network: bool = False,
             grace_s: int = 30) -> Pod:
    def spec(n: str) -> Container:
        return Container(name=n, image=f"img-{n}", spec_hash=f"h-{n}")
    return Pod(uid="uid-1", name="web", namespace="default",
               spec=PodSpec(containers=tuple(spec(n) for n in names), init_containers=tuple(spec(n) for n in init),
                            restart_policy=policy, host_network=host_network,
                            termination_grace_period_seconds=grace_s))


def sandbox(sid: str = "sb1", attempt: int = 0, state: str = READY, created_ns: int = 100,
            ips: tuple[str, ...] | None = ("10.0.0.5",), mode: str | None = "pod") -> ObservedSandbox:
    return ObservedSandbox(id=sid, name="web", namespace="default", uid="uid-1", attempt=attempt, state=state,
                           created_ns=created_ns, ips=ips, network_mode=mode)


def ctr(name: str, state: str = RUNNING, *, cid: str = "", created_ns: int = 200, exit_code: int = 0,
        spec_hash: str | None = None, restarts: int = 0, started_ns: int = 0, finished_ns: int = 0,
        reason: str = "") -> ObservedContainer:
    return ObservedContainer(id=cid or f"c-{name}-{created_ns}", name=name, sandbox_id="sb1", state=state,
                             attempt=restarts, restart_count=restarts, created_ns=created_ns,
                             started_ns=started_ns, finished_ns=finished_ns, exit_code=exit_code, reason=reason,
                             image=f"img-{name}", image_ref=f"sha256:{name}",
                             spec_hash=f"h-{name}" if spec_hash is None else spec_hash)


def observed(*containers: ObservedContainer, sandboxes: tuple[ObservedSandbox, ...] = (sandbox(),)) -> ObservedPod:
    return ObservedPod(uid="uid-1", name="web", namespace="default",
                       sandboxes=tuple(sorted(sandboxes, key=lambda s: s.created_ns, reverse=True)),
                       containers=tuple(sorted(containers, key=lambda c: c.created_ns, reverse=True)))


@dataclass(frozen=True)
class Want:
    kill_pod: bool = False
    create: bool = False
    attempt: int = 0
    init: tuple[int, ...] = ()
    start: tuple[int, ...] = ()
    kill: tuple[str, ...] = ()
    sandbox_id: str = "sb1"
    init_failed: bool = False


def check(actions: PodActions, want: Want) -> None:
    got = Want(actions.kill_pod, actions.create_sandbox, actions.attempt, actions.init_containers_to_start,
               actions.containers_to_start, tuple(k.container_id for k in actions.containers_to_kill),
               actions.sandbox_id, actions.init_failed)
    assert got == want


CASES: list[tuple[str, Pod, ObservedPod | None, Want]] = [
    ("new pod: sandbox and all containers", make_pod("a", "b"), None,
     Want(kill_pod=True, create=True, start=(0, 1), sandbox_id="")),
    ("new pod with init containers: the first init container", make_pod("a", init=("i1", "i2")), None,
     Want(kill_pod=True, create=True, init=(0,), sandbox_id="")),
    ("sandbox not ready: next attempt, everything again", make_pod("a"),
     observed(ctr("a", EXITED, exit_code=1), sandboxes=(sandbox(attempt=2, state=NOTREADY),)),
     Want(kill_pod=True, create=True, attempt=3, start=(0,))),
    ("two ready sandboxes: reconcile", make_pod("a"),
     observed(ctr("a"), sandboxes=(sandbox("sb1", created_ns=100), sandbox("sb2", attempt=1, created_ns=300))),
     Want(kill_pod=True, create=True, attempt=2, start=(0,), sandbox_id="sb2")),
    ("sandbox lost its IP", make_pod("a"), observed(ctr("a"), sandboxes=(sandbox(ips=()),)),
     Want(kill_pod=True, create=True, attempt=1, start=(0,))),
    ("host network needs no IP", make_pod("a", host_network=True),
     observed(ctr("a"), sandboxes=(sandbox(ips=(), mode="node"),)), Want()),
    ("network namespace mode changed", make_pod("a", host_network=True), observed(ctr("a")),
     Want(kill_pod=True, create=True, attempt=1, start=(0,), sandbox_id="")),
    ("Never, sandbox gone after containers ran: kill only", make_pod("a", policy=NEVER),
     observed(ctr("a", EXITED, exit_code=1), sandboxes=(sandbox(state=NOTREADY),)),
     Want(kill_pod=True, attempt=1)),
    ("OnFailure, all succeeded, sandbox gone: kill only", make_pod("a", policy=ON_FAILURE),
     observed(ctr("a", EXITED), sandboxes=(sandbox(state=NOTREADY),)), Want(kill_pod=True, attempt=1)),
    ("OnFailure, sandbox gone: only the failed container again", make_pod("a", "b", policy=ON_FAILURE),
     observed(ctr("a", EXITED), ctr("b", EXITED, exit_code=2), sandboxes=(sandbox(state=NOTREADY),)),
     Want(kill_pod=True, create=True, attempt=1, start=(1,))),
    ("sandbox gone with init containers: start over", make_pod("a", init=("i1",)),
     observed(ctr("i1", EXITED), ctr("a", EXITED, exit_code=1, created_ns=300), sandboxes=(sandbox(state=NOTREADY),)),
     Want(kill_pod=True, create=True, attempt=1, init=(0,))),
    ("first init container done: the second", make_pod("a", init=("i1", "i2")), observed(ctr("i1", EXITED)),
     Want(init=(1,))),
    ("an init container running: wait", make_pod("a", init=("i1", "i2")),
     observed(ctr("i1", EXITED), ctr("i2", created_ns=300)), Want()),
    ("init done: app containers", make_pod("a", "b", init=("i1",)), observed(ctr("i1", EXITED)),
     Want(start=(0, 1))),
    ("failed init container, Always: run it again", make_pod("a", init=("i1",)),
     observed(ctr("i1", EXITED, exit_code=1)), Want(init=(0,))),
    ("failed init container, OnFailure: run it again", make_pod("a", init=("i1",), policy=ON_FAILURE),
     observed(ctr("i1", EXITED, exit_code=1)), Want(init=(0,))),
    ("OOM-killed init container counts as failed", make_pod("a", init=("i1",)),
     observed(ctr("i1", EXITED, reason="OOMKilled")), Want(init=(0,))),
    ("failed init container, Never: the pod fails", make_pod("a", init=("i1",), policy=NEVER),
     observed(ctr("i1", EXITED, exit_code=1)), Want(kill_pod=True, init_failed=True)),
    ("init container in unknown state: kill, then run", make_pod("a", init=("i1",)),
     observed(ctr("i1", UNKNOWN, cid="x")), Want(init=(0,), kill=("x",))),
    ("app container running means init is done", make_pod("a", init=("i1",)), observed(ctr("a")), Want()),
    ("running, same spec: keep", make_pod("a"), observed(ctr("a")), Want()),
    ("running, spec changed: kill and restart", make_pod("a"), observed(ctr("a", cid="old", spec_hash="h-old")),
     Want(start=(0,), kill=("old",))),
    ("spec changed restarts even under Never", make_pod("a", policy=NEVER),
     observed(ctr("a", cid="old", spec_hash="h-old")), Want(start=(0,), kill=("old",))),
    ("exited 1, Always: restart", make_pod("a"), observed(ctr("a", EXITED, exit_code=1)), Want(start=(0,))),
    ("exited 0, Always: restart", make_pod("a"), observed(ctr("a", EXITED)), Want(start=(0,))),
    ("exited 1, OnFailure: restart", make_pod("a", policy=ON_FAILURE), observed(ctr("a", EXITED, exit_code=1)),
     Want(start=(0,))),
    ("exited 0, OnFailure: done, kill the pod", make_pod("a", policy=ON_FAILURE), observed(ctr("a", EXITED)),
     Want(kill_pod=True)),
    ("exited, Never: done, kill the pod", make_pod("a", policy=NEVER), observed(ctr("a", EXITED, exit_code=3)),
     Want(kill_pod=True)),
    ("one exited under Never, one running: keep the pod", make_pod("a", "b", policy=NEVER),
     observed(ctr("a", EXITED), ctr("b")), Want()),
    ("unknown state: kill, then start", make_pod("a"), observed(ctr("a", UNKNOWN, cid="u")),
     Want(start=(0,), kill=("u",))),
    ("created but not started: start", make_pod("a"), observed(ctr("a", CREATED)), Want(start=(0,))),
    ("a new container in a running pod: start it", make_pod("a", "b"), observed(ctr("a")), Want(start=(1,))),
]


@pytest.mark.parametrize(("pod", "seen", "want"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_compute_pod_actions(pod: Pod, seen: ObservedPod | None, want: Want) -> None:
    check(compute_pod_actions(pod, seen, Backoff(), NOW), want)


def test_deletion_kills_the_pod_with_its_grace_period() -> None:
    pod = make_pod("a", grace_s=45)
    actions = compute_pod_actions(pod, observed(ctr("a")), Backoff(), NOW, deleting=True)
    assert actions.kill_pod and actions.grace_period_s == 45 and not actions.containers_to_start
    assert compute_pod_actions(pod, None, Backoff(), NOW, deleting=True, grace_period_s=0).grace_period_s == 0


def test_a_container_in_backoff_waits_and_the_pod_is_not_killed() -> None:
    pod = make_pod("a")
    seen = observed(ctr("a", EXITED, exit_code=1, finished_ns=NOW - 5 * S))
    backoff = Backoff()
    entry = backoff_entry(pod, seen, pod.spec.containers[0])
    assert entry == (("uid-1", "a", "h-a"), NOW - 5 * S)
    backoff.next(*entry, now_ns=NOW - 5 * S)  # it was restarted once already: 10 s back-off
    actions = compute_pod_actions(pod, seen, backoff, NOW)
    assert actions.containers_to_start == () and not actions.kill_pod
    (held,) = actions.backing_off
    assert held.reason == CRASH_LOOP_BACK_OFF and held.remaining_ns == 5 * S
    assert held.message == "back-off 10s restarting failed container=a pod=web_default(uid-1)"
    assert compute_pod_actions(pod, seen, backoff, NOW + 5 * S).containers_to_start == (0,)


def test_an_init_container_in_backoff_waits() -> None:
    pod = make_pod("a", init=("i1",))
    seen = observed(ctr("i1", EXITED, exit_code=1, finished_ns=NOW))
    backoff = Backoff()
    entry = backoff_entry(pod, seen, pod.spec.init_containers[0])
    assert entry is not None
    backoff.next(*entry, now_ns=NOW)
    actions = compute_pod_actions(pod, seen, backoff, NOW + 1 * S)
    assert actions.init_containers_to_start == () and [b.name for b in actions.backing_off] == ["i1"]


def test_compute_pod_actions_does_not_change_the_backoff() -> None:
    pod = make_pod("a")
    backoff = Backoff()
    compute_pod_actions(pod, observed(ctr("a", EXITED, exit_code=1, finished_ns=NOW)), backoff, NOW)
    assert len(backoff) == 0


def test_sandbox_changed_and_initialized_helpers() -> None:
    assert sandbox_changed(make_pod("a"), None) == (True, 0, "")
    assert sandbox_changed(make_pod("a"), observed(sandboxes=(sandbox(attempt=4),))) == (False, 4, "sb1")
    assert any_app_container_created(make_pod("a"), observed(ctr("a", CREATED)))
    assert any_app_container_created(make_pod("a", init=("i1",)), observed(ctr("i1"), ctr("a", EXITED)))
    assert not any_app_container_created(make_pod("a", init=("i1",)), observed(ctr("i1"), ctr("a", EXITED)),
                                         (CREATED, RUNNING))


# -- sidecars (restartable init containers) ----------------------------------------------------------

PROBE = Probe(ExecAction(("true",)))


def sidecar_pod(*, startup: bool = False, liveness: bool = False, policy: str = ALWAYS) -> Pod:
    """Init containers: sidecar ``s`` (restartPolicy Always), then ordinary ``i``; app container ``a``."""
    side = Container(name="s", image="img-s", spec_hash="h-s", restart_policy=ALWAYS,
                     startup_probe=PROBE if startup else None, liveness_probe=PROBE if liveness else None)
    return Pod(uid="uid-1", name="web", namespace="default",
               spec=PodSpec(containers=(Container(name="a", image="img-a", spec_hash="h-a"),),
                            init_containers=(side, Container(name="i", image="img-i", spec_hash="h-i")),
                            restart_policy=policy))


def results(**by_container: str) -> Callable[[str, str], str | None]:
    """Probe results by "<kind>_<container>" (e.g. Startup_s="success") for containers ``c-<name>-200``."""
    def result_of(kind: str, container_id: str) -> str | None:
        name = container_id.split("-")[1]
        return by_container.get(f"{kind}_{name}")
    return result_of


SIDECAR_CASES: list[tuple[str, Pod, ObservedPod | None, Callable[[str, str], str | None], Want]] = [
    ("new pod: the sidecar first", sidecar_pod(), None, results(),
     Want(kill_pod=True, create=True, init=(0,), sandbox_id="")),
    ("sidecar running: the next init container starts beside it", sidecar_pod(), observed(ctr("s")), results(),
     Want(init=(1,))),
    ("sidecar with a startup probe not yet run: wait", sidecar_pod(startup=True), observed(ctr("s")), results(),
     Want()),
    ("sidecar started: the next one", sidecar_pod(startup=True), observed(ctr("s")), results(Startup_s="success"),
     Want(init=(1,))),
    ("sidecar failed its startup probe: kill and restart it", sidecar_pod(startup=True), observed(ctr("s")),
     results(Startup_s="failure"), Want(init=(0,), kill=("c-s-200",))),
    ("initialized: the app containers, the sidecar kept", sidecar_pod(),
     observed(ctr("s"), ctr("i", EXITED, created_ns=300)), results(), Want(start=(0,))),
    ("a sidecar that exited is restarted whatever the pod's policy", sidecar_pod(policy=NEVER),
     observed(ctr("s", EXITED, exit_code=0), ctr("i", EXITED, created_ns=300), ctr("a", created_ns=400)),
     results(), Want(init=(0,))),
    ("a sidecar that failed its liveness probe is restarted", sidecar_pod(liveness=True),
     observed(ctr("s"), ctr("i", EXITED, created_ns=300), ctr("a", created_ns=400)), results(Liveness_s="failure"),
     Want(init=(0,), kill=("c-s-200",))),
    ("a changed sidecar is restarted", sidecar_pod(),
     observed(ctr("s", spec_hash="old"), ctr("i", EXITED, created_ns=300), ctr("a", created_ns=400)), results(),
     Want(init=(0,), kill=("c-s-200",))),
    ("sidecars do not keep a finished pod alive", sidecar_pod(policy=NEVER),
     observed(ctr("s"), ctr("i", EXITED, created_ns=300), ctr("a", EXITED, created_ns=400)), results(),
     Want(kill_pod=True)),
]


@pytest.mark.parametrize(("pod", "seen", "probes", "want"), [c[1:] for c in SIDECAR_CASES],
                         ids=[c[0] for c in SIDECAR_CASES])
def test_compute_pod_actions_with_sidecars(pod: Pod, seen: ObservedPod | None,
                                           probes: Callable[[str, str], str | None], want: Want) -> None:
    check(compute_pod_actions(pod, seen, Backoff(), NOW, probe_result=probes), want)


def test_kill_messages_of_sidecars_and_app_containers() -> None:
    seen = observed(ctr("s"), ctr("i", EXITED, created_ns=300), ctr("a", created_ns=400))
    actions = compute_pod_actions(sidecar_pod(liveness=True), seen, Backoff(), NOW,
                                  probe_result=results(Liveness_s="failure", Liveness_a="failure"))
    assert [(k.name, k.message, k.reason) for k in actions.containers_to_kill] == [
        ("s", "Init container s failed liveness probe", "Liveness"),
        ("a", "Container a failed liveness probe, will be restarted", "Liveness")]
    assert actions.init_containers_to_start == (0,) and actions.containers_to_start == (0,)
