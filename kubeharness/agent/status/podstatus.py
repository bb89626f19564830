"""The v1 PodStatus the agent reports for a pod, as kubelet's generateAPIPodStatus builds it.

:func:`pod_status` is pure: from the desired pod, what the runtime shows (``pleg.observed``), the reasons
recorded for containers that failed to start (kubelet's reason cache: ErrImagePull, CreateContainerError...,
plus the CrashLoopBackOff entries of :class:`~kubeharness.agent.runtime.actions.PodActions`) and the previous status,
it returns the status as a JSON-ready dict. Rules from ``kubelet_pods.go`` (``convertToAPIContainerStatuses``,
``getPhase``), ``status/generate.go`` and the status manager:

- Container statuses: every container starts as waiting (ContainerCreating, or PodInitializing when the pod
  has init containers); its newest instance sets ``state`` and the one before it ``lastState``; a container
  that should restart and has a recorded reason is shown waiting with that reason (its termination moves
  to ``lastState``). ``started`` and ``ready`` of running app containers and sidecars come from the prober
  (:class:`ProbeView`; without one, or without probes, a running container is started and ready); an init
  container is ready once it exited 0. App statuses are sorted by name, init statuses follow the spec.
- Phase: Pending while init containers are pending or a container waits without a past termination; Failed
  when an init container failed under restartPolicy Never; Running while any container runs (none
  unknown); once all stopped, Running under Always (restarting), Succeeded if all exited 0, Failed under
  Never, Running under OnFailure. A terminal previous phase is kept. Static pods never go terminal merely
  because the pod worker finished (kubelet's TODO), which is every pod of this agent.
- Conditions: PodReadyToStartContainers (a usable sandbox exists), Initialized, Ready, ContainersReady,
  PodScheduled; Ready also needs every readiness gate's condition True (a static pod's gates have no
  condition, as nothing but an API client sets them, so such a pod is never Ready);
  ``lastTransitionTime`` is kept from the previous status while a condition's status holds.
- A pod ended by the agent (``evicted``: its activeDeadlineSeconds passed, or the eviction manager evicted it)
  is Failed with that reason and message, as kubelet's pod sync handlers make it; an eviction also adds a
  ``DisruptionTarget`` condition (reason ``TerminationByKubelet``, the eviction's message) at the end.
- ``startTime`` is kept from the previous status, else now; IPs: the newest ready sandbox's, one per family
  (the node's family first); a host-network pod gets the host's IPs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from kubeharness.agent.pleg.observed import EXITED, RUNNING, UNKNOWN, ObservedContainer, ObservedPod
from kubeharness.agent.pod import model
from kubeharness.agent.pod.model import Container, Pod
from kubeharness.agent.pod.qos import pod_qos
from kubeharness.agent.runtime import termination
from kubeharness.agent.runtime.actions import PodActions, sandbox_changed, should_restart

PENDING, RUNNING_PHASE, SUCCEEDED, FAILED = "Pending", "Running", "Succeeded", "Failed"
CONTAINER_CREATING, POD_INITIALIZING = "ContainerCreating", "PodInitializing"
STATUS_UNKNOWN = "ContainerStatusUnknown"

Status = dict[str, Any]


class ProbeView(Protocol):
    """What the prober says of a container (kubelet's prober manager's UpdatePodStatus)."""

    def started(self, uid: str, name: str, container_id: str, running: bool) -> bool: ...

    def ready(self, uid: str, name: str, container_id: str, running: bool) -> bool: ...


def rfc3339(ns: int) -> str | None:
    """A CRI timestamp as the API writes times (UTC, whole seconds); None for an unset (zero) time."""
    if ns <= 0:
        return None
    return datetime.fromtimestamp(ns // 1_000_000_000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _state(c: ObservedContainer, container_id: str, old: Status | None) -> Status:
    if c.state == RUNNING:
        return {"running": {"startedAt": rfc3339(c.started_ns)}}
    if c.state == EXITED:
        term: Status = {"exitCode": c.exit_code}
        if c.reason:
            term["reason"] = c.reason
        if c.message:
            term["message"] = c.message
        term.update(startedAt=rfc3339(c.started_ns), finishedAt=rfc3339(c.finished_ns), containerID=container_id)
        return {"terminated": term}
    if c.state == UNKNOWN and old is not None and "running" in old.get("state", {}):
        return {"terminated": {"exitCode": 137, "reason": STATUS_UNKNOWN,
                               "message": "The container could not be located when the pod was terminated"}}
    return {"waiting": {}}  # created, or unknown without a running past


def _convert(c: ObservedContainer, runtime_name: str, old: Status | None) -> Status:
    container_id = f"{runtime_name}://{c.id}"
    state = _state(c, container_id, old)
    restarts = c.restart_count
    if c.state == UNKNOWN and old is not None and "terminated" in state:
        restarts = old.get("restartCount", 0) + 1
    return {"name": c.name, "state": state, "lastState": {}, "ready": False, "restartCount": restarts,
            "image": c.image, "imageID": c.image_ref, "containerID": container_id, "started": False}


def _container_statuses(pod: Pod, observed: ObservedPod | None, containers: Sequence[Container],
                        previous: Sequence[Status], *, is_init: bool, runtime_name: str,
                        reasons: Mapping[str, tuple[str, str]], probes: ProbeView | None = None) -> list[Status]:
    old_by_name = {s.get("name"): s for s in previous}
    default_reason = POD_INITIALIZING if pod.spec.init_containers else CONTAINER_CREATING
    statuses: dict[str, Status] = {}
    for c in containers:
        status: Status = {"name": c.name, "state": {"waiting": {"reason": default_reason}}, "lastState": {},
                          "ready": False, "restartCount": 0, "image": c.image, "imageID": "", "started": False}
        old = old_by_name.get(c.name)
        if old is not None:
            if "terminated" in old.get("state", {}):
                status = dict(old)
            else:
                status.update(restartCount=old.get("restartCount", 0), lastState=old.get("lastState", {}))
        statuses[c.name] = status
    for c in containers:
        instances = observed.instances(c.name) if observed is not None else ()
        if instances:
            statuses[c.name] = _convert(instances[0], runtime_name, old_by_name.get(c.name))
            if len(instances) > 1:
                statuses[c.name]["lastState"] = _convert(instances[1], runtime_name, None)["state"]
    app_created = observed is not None and any(observed.latest(a.name) is not None for a in pod.spec.containers)
    for c in containers:
        latest = observed.latest(c.name) if observed is not None else None
        if is_init and c.restart_policy == model.ALWAYS:  # a sidecar: restarted whenever it is not running
            if (latest is None or latest.state != RUNNING) and c.name in reasons:
                status = statuses[c.name]
                if "terminated" in status["state"]:
                    status["lastState"] = status["state"]
                reason, message = reasons[c.name]
                status["state"] = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
            continue
        if is_init:
            if latest is not None and latest.state == EXITED and latest.exit_code == 0:
                continue
            if latest is None and app_created and "waiting" in statuses[c.name]["state"]:
                statuses[c.name]["state"] = {"terminated": {
                    "exitCode": 0, "reason": "Completed",
                    "message": "Unable to get init container status from container runtime and pod has been "
                               "initialized, treat it as exited normally"}}
                continue
        if not should_restart(pod, latest) or c.name not in reasons:
            continue
        status = statuses[c.name]
        if "terminated" in status["state"]:
            status["lastState"] = status["state"]
        reason, message = reasons[c.name]
        status["state"] = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
    sidecars = {c.name for c in containers if is_init and c.restart_policy == model.ALWAYS}
    for status in statuses.values():
        state = status["state"]
        running = "running" in state
        if is_init and status["name"] not in sidecars:
            status["started"] = running
            status["ready"] = "terminated" in state and state["terminated"].get("exitCode") == 0
        elif probes is None:
            status["started"] = status["ready"] = running
        else:
            container_id = status.get("containerID", "").partition("://")[2]
            status["started"] = probes.started(pod.uid, status["name"], container_id, running)
            status["ready"] = probes.ready(pod.uid, status["name"], container_id, running)
    ordered = [statuses[c.name] for c in containers]
    return ordered if is_init else sorted(ordered, key=lambda s: str(s["name"]))


def _terminated_exit(status: Status, key: str) -> int | None:
    term = status.get(key, {}).get("terminated")
    return int(term.get("exitCode", 0)) if term is not None else None


def phase(pod: Pod, init_statuses: Sequence[Status], statuses: Sequence[Status]) -> str:
    """Kubelet's getPhase (static pods, so never terminal by the pod worker's say). Sidecars count as running
    containers; one that runs but has not started, or waits without having run, keeps an uninitialized pod
    Pending; one that stopped does not count."""
    pending_init = failed_init = 0
    by_name = {s["name"]: s for s in (*init_statuses, *statuses)}
    unknown = running = waiting = stopped = succeeded = pending_sidecars = 0
    for c in pod.spec.init_containers:
        s = by_name.get(c.name)
        if c.restart_policy == model.ALWAYS:
            state = s["state"] if s else {}
            if s is None:
                unknown += 1
            elif "running" in state:
                pending_sidecars += 0 if s.get("started") else 1
                running += 1
            elif "waiting" in state and _terminated_exit(s, "lastState") is None:
                pending_sidecars += 1
                waiting += 1
            continue
        state = s["state"] if s else {}
        if s is None or "running" in state:
            pending_init += 1
        elif "terminated" in state:
            failed_init += 1 if _terminated_exit(s, "state") != 0 else 0
        elif "waiting" in state and (last := _terminated_exit(s, "lastState")) is not None:
            failed_init += 1 if last != 0 else 0
        else:
            pending_init += 1
    initialized = any("waiting" not in by_name[c.name]["state"] or _terminated_exit(by_name[c.name], "lastState")
                      is not None for c in pod.spec.containers if c.name in by_name)
    for c in pod.spec.containers:
        s = by_name.get(c.name)
        state = s["state"] if s else {}
        if s is None:
            unknown += 1
        elif "running" in state:
            running += 1
        elif "terminated" in state:
            stopped += 1
            succeeded += 1 if _terminated_exit(s, "state") == 0 else 0
        elif "waiting" in state:
            if _terminated_exit(s, "lastState") is not None:
                stopped += 1
            else:
                waiting += 1
        else:
            unknown += 1
    policy = pod.spec.restart_policy
    if failed_init and policy == model.NEVER:
        return FAILED
    if pending_init or (pending_sidecars and not initialized) or waiting:
        return PENDING
    if running and not unknown:
        return RUNNING_PHASE
    if not running and stopped and not unknown:
        if policy == model.ALWAYS:
            return RUNNING_PHASE
        if stopped == succeeded:
            return SUCCEEDED
        return FAILED if policy == model.NEVER else RUNNING_PHASE
    return PENDING


def _go_list(names: Sequence[str]) -> str:
    return "[" + " ".join(names) + "]"


def _conditions(pod: Pod, observed: ObservedPod | None, init_statuses: Sequence[Status],
                statuses: Sequence[Status], pod_phase: str) -> list[Status]:
    ready_to_start = not sandbox_changed(pod, observed)[0]
    conds: list[Status] = [{"type": "PodReadyToStartContainers", "status": "True" if ready_to_start else "False"}]
    sidecars = {c.name for c in pod.spec.init_containers if c.restart_policy == model.ALWAYS}
    incomplete = [s["name"] for s in init_statuses if not (s["started"] if s["name"] in sidecars else s["ready"])]
    app_started = any("running" in s["state"] or "terminated" in s["state"] for s in statuses)
    if pod_phase == SUCCEEDED:
        conds.append({"type": "Initialized", "status": "True", "reason": "PodCompleted"})
    elif app_started or not incomplete:
        conds.append({"type": "Initialized", "status": "True"})
    else:
        conds.append({"type": "Initialized", "status": "False", "reason": "ContainersNotInitialized",
                      "message": f"containers with incomplete status: {_go_list(incomplete)}"})
    unready = [c.name for c in pod.spec.init_containers if c.name in sidecars
               and not next((s["ready"] for s in init_statuses if s["name"] == c.name), False)]
    unready += [c.name for c in pod.spec.containers
                if not next((s["ready"] for s in statuses if s["name"] == c.name), False)]
    if pod_phase in (SUCCEEDED, FAILED):
        containers_ready: Status = {"type": "ContainersReady", "status": "False",
                                    "reason": "PodCompleted" if pod_phase == SUCCEEDED else "PodFailed"}
    elif unready:
        containers_ready = {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady",
                            "message": f"containers with unready status: {_go_list(unready)}"}
    else:
        containers_ready = {"type": "ContainersReady", "status": "True"}
    conds.append(_ready(pod, containers_ready, conds))
    conds.append(containers_ready)
    conds.append({"type": "PodScheduled", "status": "True"})
    return conds


def _ready(pod: Pod, containers_ready: Status, conditions: Sequence[Status]) -> Status:
    """The Ready condition: ContainersReady's, and then every readiness gate's condition must be True
    (kubelet's GeneratePodReadyCondition)."""
    if containers_ready["status"] != "True":
        return {**containers_ready, "type": "Ready"}
    gates = [g.get("conditionType", "") for g in pod.raw.get("spec", {}).get("readinessGates") or []
             if isinstance(g, dict)]
    present = {c["type"]: c for c in conditions}
    missing = [g for g in gates if g not in present]
    unready = [g for g in gates if g in present and present[g]["status"] != "True"]
    if not missing and not unready:
        return {"type": "Ready", "status": "True"}
    messages = [f'corresponding condition of pod readiness gate "{g}" does not exist.' for g in missing]
    messages += [f'the status of pod readiness gate "{g}" is not "True", but {present[g]["status"]}' for g in unready]
    return {"type": "Ready", "status": "False", "reason": "ReadinessGatesNotReady", "message": ", ".join(messages)}


def _stamp(conditions: list[Status], previous: Sequence[Status], now: str | None) -> list[Status]:
    old = {c.get("type"): c for c in previous}
    stamped = []
    for c in conditions:
        before = old.get(c["type"])
        since = before.get("lastTransitionTime") if before and before.get("status") == c["status"] else now
        ordered: Status = {"type": c["type"], "status": c["status"], "lastProbeTime": None,
                           "lastTransitionTime": since}
        ordered.update({k: v for k, v in c.items() if k in ("reason", "message")})
        stamped.append(ordered)
    return stamped


def sort_pod_ips(ips: Sequence[str], host_ips: Sequence[str] = ()) -> list[str]:
    """The first IP of the node's family, then the first of the other family (kubelet's sortPodIPs)."""
    parsed = []
    for ip in ips:
        try:
            parsed.append(ipaddress.ip_address(ip))
        except ValueError:
            continue
    primary = 6 if host_ips and ipaddress.ip_address(host_ips[0]).version == 6 else 4
    chosen = [next((str(ip) for ip in parsed if ip.version == v), None) for v in (primary, 10 - primary)]
    return [ip for ip in chosen if ip is not None]


def pod_status(pod: Pod, observed: ObservedPod | None, *, now_ns: int, runtime_name: str = "containerd",
               host_ips: Sequence[str] = (), reasons: Mapping[str, tuple[str, str]] | None = None,
               actions: PodActions | None = None, previous: Mapping[str, Any] | None = None,
               probes: ProbeView | None = None, evicted: tuple[str, str] | None = None,
               disruption: str | None = None) -> Status:
    """The pod's v1 PodStatus. ``reasons``: container name -> (waiting reason, message), kubelet's reason cache;
    ``evicted``: (reason, message) when an internal module ended the pod (its active deadline passed): Failed;
    ``disruption``: the eviction manager's message, for the DisruptionTarget condition."""
    previous = previous or {}
    waiting = dict(reasons or {})
    if actions is not None:
        waiting.update({b.name: (b.reason, b.message) for b in actions.backing_off})
    inits = _container_statuses(pod, observed, pod.spec.init_containers, previous.get("initContainerStatuses", []),
                                is_init=True, runtime_name=runtime_name, reasons=waiting, probes=probes)
    apps = _container_statuses(pod, observed, pod.spec.containers, previous.get("containerStatuses", []),
                               is_init=False, runtime_name=runtime_name, reasons=waiting, probes=probes)
    pod_phase = phase(pod, inits, apps)
    if pod_phase not in (SUCCEEDED, FAILED) and previous.get("phase") in (SUCCEEDED, FAILED):
        pod_phase = previous["phase"]
    if evicted is not None:
        pod_phase = FAILED
    now = rfc3339(now_ns)
    conditions = _conditions(pod, observed, inits, apps, pod_phase)
    if disruption is not None:
        conditions.append({"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet",
                           "message": disruption})
    status: Status = {"phase": pod_phase, "conditions": _stamp(conditions, previous.get("conditions", []), now)}
    if host_ips:
        status["hostIP"] = host_ips[0]
        status["hostIPs"] = [{"ip": ip} for ip in host_ips[:2]]
    pod_ips = list(host_ips[:2]) if pod.spec.host_network else sort_pod_ips(observed.ips if observed else (), host_ips)
    if pod_ips:
        status["podIP"] = pod_ips[0]
        status["podIPs"] = [{"ip": ip} for ip in pod_ips]
    if evicted is not None:
        status["reason"], status["message"] = evicted
    status["startTime"] = previous.get("startTime") or now
    if pod.spec.init_containers:
        status["initContainerStatuses"] = inits
    termination.truncate_pod_messages(len(pod.spec.containers) + len(pod.spec.init_containers), [*inits, *apps])
    status["containerStatuses"] = apps
    status["qosClass"] = pod_qos(pod)
    return status
