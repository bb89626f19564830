"""What the sync loop must do to bring a pod's runtime state to its spec: kubelet's computePodActions.

:func:`compute_pod_actions` is pure: it reads the desired :class:`~kubeharness.agent.pod.model.Pod`, the
:class:`~kubeharness.agent.pleg.observed.ObservedPod` and the crash-loop
:class:`~kubeharness.agent.runtime.backoff.Backoff` (without changing it) and returns a :class:`PodActions`.
The rules are those of ``kuberuntime_manager.go`` (and ``kuberuntime/util``, ``kuberuntime_container.go``,
``container/helpers.go``), without ephemeral containers or in-place resize:

1. Sandbox: a new one is needed when there is none, when several are ready, when the newest is not ready,
   when its network namespace mode does not match hostNetwork, or when a non-host-network sandbox has no
   IP. Then the whole pod is killed and restarted from its first init container (attempt = highest
   attempt + 1), except that a pod whose restartPolicy is Never and that already ran containers is only
   killed, and a pod with nothing left to start (OnFailure and all succeeded, after initialization) too.
2. Init containers (kubelet's computeInitContainerActions, read from the last one backwards): ordinary ones
   run one at a time, in order, to completion; a failed one (non-zero exit, OOMKilled or unknown state) is
   started again unless restartPolicy is Never, in which case the pod is killed (and ``status.podstatus``
   reports it Failed). A sidecar (``restartPolicy: Always`` on an init container) counts as done once it
   runs and its startup probe, if any, succeeded; then the next init container starts while it keeps
   running; it is restarted whenever it exits (whatever the pod's policy), fails its startup or liveness
   probe, or its spec changes. App containers start once every init container is done.
3. App containers that are not running are started if the policy says so (Always; OnFailure after a
   non-zero exit; Never: never again); one in unknown state is killed first. A running container whose
   spec hash changed is killed and started again; so is one whose liveness or startup probe failed
   (``failed_probe``), unless restartPolicy is Never, when it is only killed; it is killed with the probe's
   terminationGracePeriodSeconds when set. When nothing is left running or to start, the pod is killed.
4. Back-off: a container to start whose last instance exited is held back while
   ``backoff.in_backoff`` says so; it appears in :attr:`PodActions.backing_off` with kubelet's
   CrashLoopBackOff reason and message instead. The caller calls ``backoff.next(*backoff_entry(...))``
   when it does start a container (kubelet's doBackOff does both in one go at start time).
5. Deletion (``deleting=True``): kill the pod with the given grace period (or the pod's), start nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from kubeharness.agent.pleg.observed import CREATED, EXITED, RUNNING, UNKNOWN, ObservedContainer, ObservedPod
from kubeharness.agent.pod import model
from kubeharness.agent.pod.model import Container, Pod
from kubeharness.agent.runtime.backoff import Backoff, BackoffKey, backoff_key, go_duration

CRASH_LOOP_BACK_OFF = "CrashLoopBackOff"
OOM_KILLED = "OOMKilled"


@dataclass(frozen=True)
class ContainerToKill:
    container_id: str
    name: str
    message: str
    reason: str = ""  # kubelet's kill reason: "Unknown" (unknown state), "Liveness" or "Startup" (a failed probe)
    grace_period_s: int | None = None  # None: the pod's terminationGracePeriodSeconds


@dataclass(frozen=True)
class BackingOff:
    """A container that should start but is held back by crash-loop back-off."""

    name: str
    reason: str  # CrashLoopBackOff
    message: str  # "back-off 20s restarting failed container=... pod=..."
    remaining_ns: int  # until it may start


@dataclass(frozen=True)
class PodActions:
    kill_pod: bool = False  # stop every container and the sandbox(es)
    create_sandbox: bool = False  # then run a new sandbox (and remove the old init containers)
    sandbox_id: str = ""  # the existing sandbox, to start containers in
    attempt: int = 0  # the sandbox attempt to create (or of the existing one)
    init_containers_to_start: tuple[int, ...] = ()  # indexes into spec.init_containers, in spec order
    containers_to_start: tuple[int, ...] = ()  # indexes into spec.containers
    containers_to_kill: tuple[ContainerToKill, ...] = ()
    backing_off: tuple[BackingOff, ...] = ()
    grace_period_s: int | None = None  # for kill_pod on deletion; None: the pod's own
    init_failed: bool = False  # an init container failed and will not be restarted (restartPolicy Never)


def sandbox_changed(pod: Pod, observed: ObservedPod | None) -> tuple[bool, int, str]:
    """(a new sandbox is needed, its attempt, the current sandbox id), as kubelet's PodSandboxChanged."""
    if observed is None or not observed.sandboxes:
        return True, 0, ""
    newest = observed.sandboxes[0]
    max_attempt = max(s.attempt for s in observed.sandboxes)
    if sum(1 for s in observed.sandboxes if s.ready) > 1 or not newest.ready:
        return True, max_attempt + 1, newest.id
    wanted_mode = "node" if pod.spec.host_network else "pod"
    if newest.network_mode is not None and newest.network_mode != wanted_mode:
        return True, max_attempt + 1, ""
    if not pod.spec.host_network and newest.ips is not None and not newest.ips:
        return True, max_attempt + 1, newest.id
    return False, max_attempt, newest.id


def should_restart(pod: Pod, status: ObservedContainer | None, deleting: bool = False) -> bool:
    """Kubelet's ShouldContainerBeRestarted for the container's newest instance ``status``."""
    if deleting:
        return False
    if status is None:
        return True
    if status.state == RUNNING:
        return False
    if status.state != EXITED:  # created or unknown
        return True
    if pod.spec.restart_policy == model.NEVER:
        return False
    return not (pod.spec.restart_policy == model.ON_FAILURE and status.exit_code == 0)


def _init_failed(status: ObservedContainer) -> bool:
    return status.reason == OOM_KILLED or status.state == UNKNOWN or (status.state == EXITED and status.exit_code != 0)


def is_sidecar(container: Container) -> bool:
    """A restartable init container (``restartPolicy: Always``)."""
    return container.restart_policy == model.ALWAYS


def any_app_container_created(pod: Pod, observed: ObservedPod | None,
                              states: tuple[str, ...] = (CREATED, RUNNING, EXITED)) -> bool:
    """An app container exists in one of ``states``: the pod was initialized (kubelet's
    hasAnyRegularContainerCreated; its computeInitContainerActions counts only created and running ones, as an
    exited one may be from a sandbox before a reboot)."""
    return observed is not None and any(
        (s := observed.latest(c.name)) is not None and s.state in states for c in pod.spec.containers)


@dataclass
class _InitPlan:
    start: list[int]
    kills: list[ContainerToKill]
    kill_pod: bool = False
    initialized: bool = False


def _init_actions(pod: Pod, observed: ObservedPod | None, probe_result: ProbeResultOf) -> _InitPlan:
    """Kubelet's computeInitContainerActions: which init containers to (re)start and kill; done or not."""
    plan = _InitPlan([], [])
    inits = pod.spec.init_containers
    if not inits:
        plan.initialized = True
        return plan
    plan.initialized = any_app_container_created(pod, observed, (CREATED, RUNNING))
    previously = plan.initialized
    restart_on_failure = pod.spec.restart_policy != model.NEVER
    for i in range(len(inits) - 1, -1, -1):
        container = inits[i]
        status = observed.latest(container.name) if observed is not None else None
        if status is None:
            if previously and is_sidecar(container):
                plan.start.append(i)
            continue
        if previously and not is_sidecar(container):
            continue  # after initialization only sidecars are kept running
        if status.state == CREATED:
            plan.start.append(i)  # started in the same step as created: it failed to start
        elif status.state == RUNNING:
            if is_sidecar(container):
                _running_sidecar(plan, pod, container, status, i, previously, probe_result)
        elif status.state == EXITED:
            if is_sidecar(container):
                plan.start.append(i)
            elif _init_failed(status):
                plan.start.append(i)
                if not restart_on_failure:
                    return _InitPlan([], plan.kills, kill_pod=True)
            elif i == len(inits) - 1:
                plan.initialized = True
            else:
                plan.start.append(i + 1)
        else:  # unknown
            if not is_sidecar(container) and not restart_on_failure:
                return _InitPlan([], plan.kills, kill_pod=True)
            plan.kills.append(ContainerToKill(status.id, status.name,
                                              'Init container is in "unknown" state, try killing it before restart',
                                              "Unknown"))
            plan.start.append(i)
        previously = True
    if not previously:
        plan.start.append(0)
    plan.start.reverse()
    return plan


def _running_sidecar(plan: _InitPlan, pod: Pod, container: Container, status: ObservedContainer, i: int,
                     previously: bool, probe_result: ProbeResultOf) -> None:
    if container.startup_probe is not None:
        startup = probe_result(STARTUP, status.id)
        if startup == FAILURE:
            plan.kills.append(ContainerToKill(status.id, status.name, f"Init container {container.name} failed "
                                              "startup probe", STARTUP,
                                              container.startup_probe.termination_grace_period_seconds))
            plan.start.append(i)
        if startup != SUCCESS:
            return  # not started yet: wait for its startup probe
    if i == len(pod.spec.init_containers) - 1:
        plan.initialized = True
    elif not previously:
        plan.start.append(i + 1)  # initialized for the first time: start the next one
    if status.spec_hash != container.spec_hash:
        plan.kills.append(ContainerToKill(status.id, status.name,
                                          f"Init container {container.name} definition changed"))
        plan.start.append(i)
        return
    if container.liveness_probe is not None and probe_result(LIVENESS, status.id) == FAILURE:
        plan.kills.append(ContainerToKill(status.id, status.name, f"Init container {container.name} failed liveness "
                                          "probe", LIVENESS, container.liveness_probe.termination_grace_period_seconds))
        plan.start.append(i)


def backoff_entry(pod: Pod, observed: ObservedPod | None, container: Container) -> tuple[BackoffKey, int] | None:
    """(back-off key, finish time of the last exited instance) for ``container``, or None if none exited."""
    last = observed.latest_exited(container.name) if observed is not None else None
    if last is None:
        return None
    return backoff_key(pod, container), last.finished_ns


def _backing_off(pod: Pod, observed: ObservedPod | None, container: Container, backoff: Backoff,
                 now_ns: int) -> BackingOff | None:
    entry = backoff_entry(pod, observed, container)
    if entry is None:
        return None
    key, finished_ns = entry
    remaining = backoff.remaining_ns(key, finished_ns, now_ns)
    if remaining <= 0:
        return None
    message = (f"back-off {go_duration(backoff.get_ns(key))} restarting failed container={container.name} "
               f"pod={pod.name}_{pod.namespace}({pod.uid})")
    return BackingOff(container.name, CRASH_LOOP_BACK_OFF, message, remaining)


def _with_backoff(pod: Pod, observed: ObservedPod | None, actions: PodActions, backoff: Backoff,
                  now_ns: int) -> PodActions:
    """Move the containers that are backing off out of the start lists."""
    held: list[BackingOff] = []
    inits: list[int] = []
    for idx in actions.init_containers_to_start:
        b = _backing_off(pod, observed, pod.spec.init_containers[idx], backoff, now_ns)
        if b is None:
            inits.append(idx)
        else:
            held.append(b)
    start: list[int] = []
    for idx in actions.containers_to_start:
        b = _backing_off(pod, observed, pod.spec.containers[idx], backoff, now_ns)
        if b is None:
            start.append(idx)
        else:
            held.append(b)
    return replace(actions, init_containers_to_start=tuple(inits), containers_to_start=tuple(start),
                   backing_off=tuple(held))


# (probe kind "Liveness" | "Startup" | "Readiness", container id) -> the prober's cached result: "success",
# "failure", "unknown", or None when it has none
ProbeResultOf = Callable[[str, str], str | None]
LIVENESS, STARTUP = "Liveness", "Startup"
SUCCESS, FAILURE = "success", "failure"


def _no_probe_results(_kind: str, _container_id: str) -> str | None:
    return None


def _failed_probe(probe_result: ProbeResultOf, container_id: str) -> str | None:
    """LIVENESS or STARTUP when that probe failed and the running container must be killed."""
    for kind in (LIVENESS, STARTUP):
        if probe_result(kind, container_id) == FAILURE:
            return kind
    return None


def compute_pod_actions(pod: Pod, observed: ObservedPod | None, backoff: Backoff, now_ns: int, *,
                        deleting: bool = False, grace_period_s: int | None = None,
                        probe_result: ProbeResultOf = _no_probe_results) -> PodActions:
    """Kubelet's computePodActions (plus the back-off check of its start step); pure."""
    if deleting:
        grace = grace_period_s if grace_period_s is not None else pod.spec.termination_grace_period_seconds
        return PodActions(kill_pod=True, grace_period_s=grace)
    create, attempt, sandbox_id = sandbox_changed(pod, observed)
    if create:
        actions = _recreate(pod, observed, attempt, sandbox_id)
    else:
        actions = _in_sandbox(pod, observed, attempt, sandbox_id, probe_result)
    return _with_backoff(pod, observed, actions, backoff, now_ns)


def _recreate(pod: Pod, observed: ObservedPod | None, attempt: int, sandbox_id: str) -> PodActions:
    kill_only = PodActions(kill_pod=True, sandbox_id=sandbox_id, attempt=attempt)
    ran_containers = observed is not None and bool(observed.containers)
    if pod.spec.restart_policy == model.NEVER and attempt != 0 and ran_containers:
        return kill_only
    to_start = tuple(i for i, c in enumerate(pod.spec.containers)
                     if not (pod.spec.restart_policy == model.ON_FAILURE and _succeeded(observed, c)))
    if not to_start and any_app_container_created(pod, observed):
        return kill_only
    if pod.spec.init_containers:
        return replace(kill_only, create_sandbox=True, init_containers_to_start=(0,))
    return replace(kill_only, create_sandbox=True, containers_to_start=to_start)


def _succeeded(observed: ObservedPod | None, container: Container) -> bool:
    status = observed.latest(container.name) if observed is not None else None
    return status is not None and status.state == EXITED and status.exit_code == 0


def _in_sandbox(pod: Pod, observed: ObservedPod | None, attempt: int, sandbox_id: str,
                probe_result: ProbeResultOf) -> PodActions:
    init = _init_actions(pod, observed, probe_result)
    if init.kill_pod:
        return PodActions(kill_pod=True, sandbox_id=sandbox_id, attempt=attempt, init_failed=True,
                          containers_to_kill=tuple(init.kills))
    if not init.initialized:
        return PodActions(sandbox_id=sandbox_id, attempt=attempt, init_containers_to_start=tuple(init.start),
                          containers_to_kill=tuple(init.kills))
    kills: list[ContainerToKill] = list(init.kills)
    keep = 0
    start: list[int] = []
    for idx, container in enumerate(pod.spec.containers):
        status = observed.latest(container.name) if observed is not None else None
        if status is None or status.state != RUNNING:
            if should_restart(pod, status):
                start.append(idx)
                if status is not None and status.state == UNKNOWN:
                    kills.append(ContainerToKill(status.id, status.name,
                                                 'Container is in "unknown" state, try killing it before restart',
                                                 "Unknown"))
            continue
        if status.spec_hash != container.spec_hash:
            kills.append(ContainerToKill(status.id, status.name,
                                         f"Container {container.name} definition changed, will be restarted"))
            start.append(idx)
            continue
        kind = _failed_probe(probe_result, status.id)
        if kind is not None:
            probe = container.liveness_probe if kind == LIVENESS else container.startup_probe
            message = f"Container {container.name} failed {kind.lower()} probe"
            if pod.spec.restart_policy != model.NEVER:
                message += ", will be restarted"
                start.append(idx)
            kills.append(ContainerToKill(status.id, status.name, message, kind,
                                         probe.termination_grace_period_seconds if probe is not None else None))
            continue
        keep += 1
    if keep == 0 and not start:  # nothing left to run; sidecars do not keep a pod alive
        return PodActions(kill_pod=True, sandbox_id=sandbox_id, attempt=attempt, containers_to_kill=tuple(kills))
    return PodActions(sandbox_id=sandbox_id, attempt=attempt, init_containers_to_start=tuple(init.start),
                      containers_to_start=tuple(start), containers_to_kill=tuple(kills))
