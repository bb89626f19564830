"""The v1 PodStatus: phases, conditions, container states, over hand-built observed pods."""

from __future__ import annotations

from typing import Any

import pytest

from kubeharness.agent.pleg.observed import CREATED, EXITED, UNKNOWN, ObservedPod
from kubeharness.agent.pod.model import NEVER, ON_FAILURE, Pod
from kubeharness.agent.runtime.actions import BackingOff, PodActions
from kubeharness.agent.status.podstatus import pod_status, rfc3339, sort_pod_ips
from kubeharness.clock import NS_PER_SECOND
from tests.test_agent_actions import ctr, make_pod, observed, sandbox

S = NS_PER_SECOND
T0 = 1_767_225_600 * S  # 2026-01-01T00:00:00Z
NOW = T0 + 60 * S
NOW_TEXT = "2026-01-01T00:01:00Z"


def status_of(pod: Pod, seen: ObservedPod | None, **kw: Any) -> dict[str, Any]:
    return pod_status(pod, seen, now_ns=NOW, host_ips=("192.168.1.10",), **kw)


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c.get("reason", "")) for c in status["conditions"]}


def test_a_running_pod_in_full() -> None:
    seen = observed(ctr("a", cid="abc", started_ns=T0 + 5 * S))
    assert status_of(make_pod("a"), seen) == {
        "phase": "Running",
        "conditions": [
            {"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": NOW_TEXT}
            for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")],
        "hostIP": "192.168.1.10",
        "hostIPs": [{"ip": "192.168.1.10"}],
        "podIP": "10.0.0.5",
        "podIPs": [{"ip": "10.0.0.5"}],
        "startTime": NOW_TEXT,
        "containerStatuses": [{
            "name": "a", "state": {"running": {"startedAt": "2026-01-01T00:00:05Z"}}, "lastState": {},
            "ready": True, "restartCount": 0, "image": "img-a", "imageID": "sha256:a",
            "containerID": "containerd://abc", "started": True}],
        "qosClass": "BestEffort",
    }


CRASHED = ctr("a", EXITED, cid="old", exit_code=1, reason="Error", restarts=2, started_ns=T0, finished_ns=T0 + S)
BACKING_OFF = PodActions(backing_off=(BackingOff("a", "CrashLoopBackOff", "back-off 20s restarting failed", S),))

# (name, pod, observed, extra arguments, phase, {condition: (status, reason)}, app container state key, reason)
CASES: list[tuple[str, Pod, ObservedPod | None, dict[str, Any], str, dict[str, tuple[str, str]], str, str]] = [
    ("nothing yet", make_pod("a"), None, {}, "Pending",
     {"PodReadyToStartContainers": ("False", ""), "Initialized": ("True", ""), "Ready": ("False", "ContainersNotReady"),
      "ContainersReady": ("False", "ContainersNotReady")}, "waiting", "ContainerCreating"),
    ("sandbox up, container not yet", make_pod("a"), observed(), {}, "Pending",
     {"PodReadyToStartContainers": ("True", "")}, "waiting", "ContainerCreating"),
    ("created, not started", make_pod("a"), observed(ctr("a", CREATED)), {}, "Pending",
     {"Ready": ("False", "ContainersNotReady")}, "waiting", ""),
    ("image pull failing", make_pod("a"), observed(), {"reasons": {"a": ("ErrImagePull", "not found")}}, "Pending",
     {}, "waiting", "ErrImagePull"),
    ("init containers pending", make_pod("a", init=("i1",)), observed(), {}, "Pending",
     {"Initialized": ("False", "ContainersNotInitialized")}, "waiting", "PodInitializing"),
    ("init running", make_pod("a", init=("i1",)), observed(ctr("i1")), {}, "Pending",
     {"Initialized": ("False", "ContainersNotInitialized")}, "waiting", "PodInitializing"),
    ("init done, app running", make_pod("a", init=("i1",)), observed(ctr("i1", EXITED), ctr("a", created_ns=300)), {},
     "Running", {"Initialized": ("True", ""), "Ready": ("True", "")}, "running", ""),
    ("init failed, Never", make_pod("a", init=("i1",), policy=NEVER), observed(ctr("i1", EXITED, exit_code=1)), {},
     "Failed", {"Ready": ("False", "PodFailed"), "ContainersReady": ("False", "PodFailed")}, "waiting",
     "PodInitializing"),
    ("init failed, backing off", make_pod("a", init=("i1",)), observed(ctr("i1", EXITED, exit_code=1)),
     {"reasons": {"i1": ("CrashLoopBackOff", "back-off")}}, "Pending", {}, "waiting", "PodInitializing"),
    ("crash loop, Always", make_pod("a"), observed(CRASHED), {"actions": BACKING_OFF}, "Running",
     {"Ready": ("False", "ContainersNotReady")}, "waiting", "CrashLoopBackOff"),
    ("exited, not yet restarted", make_pod("a"), observed(CRASHED), {}, "Running", {}, "terminated", "Error"),
    ("exited 1, Never", make_pod("a", policy=NEVER), observed(CRASHED), {}, "Failed",
     {"Ready": ("False", "PodFailed")}, "terminated", "Error"),
    ("exited 0, OnFailure", make_pod("a", policy=ON_FAILURE), observed(ctr("a", EXITED, reason="Completed")), {},
     "Succeeded", {"Initialized": ("True", "PodCompleted"), "ContainersReady": ("False", "PodCompleted")},
     "terminated", "Completed"),
    ("exited 1, OnFailure, restarting", make_pod("a", policy=ON_FAILURE), observed(CRASHED), {}, "Running", {},
     "terminated", "Error"),
    ("one done, one running, Never", make_pod("a", "b", policy=NEVER), observed(ctr("a", EXITED), ctr("b")), {},
     "Running", {"ContainersReady": ("False", "ContainersNotReady")}, "terminated", ""),
    ("sandbox gone", make_pod("a"), observed(CRASHED, sandboxes=(sandbox(state="notready"),)), {}, "Running",
     {"PodReadyToStartContainers": ("False", "")}, "terminated", "Error"),
]


@pytest.mark.parametrize(("pod", "seen", "extra", "phase", "conds", "state", "reason"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_pod_status(pod: Pod, seen: ObservedPod | None, extra: dict[str, Any], phase: str,
                    conds: dict[str, tuple[str, str]], state: str, reason: str) -> None:
    status = status_of(pod, seen, **extra)
    assert status["phase"] == phase
    got = conditions(status)
    assert {k: got[k] for k in conds} == conds
    app = status["containerStatuses"][0]
    assert list(app["state"]) == [state]
    assert app["state"][state].get("reason", "") == reason


def test_a_crash_loop_shows_the_last_termination() -> None:
    status = status_of(make_pod("a"), observed(CRASHED), actions=BACKING_OFF)
    (app,) = status["containerStatuses"]
    assert app["state"] == {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s restarting failed"}}
    assert app["lastState"] == {"terminated": {
        "exitCode": 1, "reason": "Error", "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:00:01Z",
        "containerID": "containerd://old"}}
    assert (app["restartCount"], app["ready"], app["started"]) == (2, False, False)
    assert conditions(status)["Ready"] == ("False", "ContainersNotReady")
    assert status["conditions"][2]["message"] == "containers with unready status: [a]"


def test_a_restarted_container_has_its_previous_run_as_last_state() -> None:
    seen = observed(CRASHED, ctr("a", cid="new", created_ns=300, restarts=3))
    (app,) = status_of(make_pod("a"), seen)["containerStatuses"]
    assert "running" in app["state"] and app["lastState"]["terminated"]["containerID"] == "containerd://old"
    assert app["restartCount"] == 3


def test_init_statuses_follow_the_spec_and_app_statuses_are_sorted_by_name() -> None:
    pod = make_pod("zeta", "alpha", init=("second", "first"))
    seen = observed(ctr("second", EXITED), ctr("first", EXITED, created_ns=300), ctr("zeta", created_ns=400))
    status = status_of(pod, seen)
    assert [s["name"] for s in status["initContainerStatuses"]] == ["second", "first"]
    assert [s["ready"] for s in status["initContainerStatuses"]] == [True, True]
    assert [s["name"] for s in status["containerStatuses"]] == ["alpha", "zeta"]
    assert conditions(status)["Initialized"] == ("True", "")


def test_an_init_container_removed_after_initialization_reads_completed() -> None:
    status = status_of(make_pod("a", init=("i1",)), observed(ctr("a")))
    (init,) = status["initContainerStatuses"]
    assert init["state"]["terminated"]["reason"] == "Completed" and init["ready"]


def test_the_previous_status_keeps_times_and_terminal_phase() -> None:
    pod = make_pod("a")
    first = status_of(pod, observed(ctr("a")))
    later = pod_status(pod, observed(ctr("a")), now_ns=NOW + 30 * S, previous=first)
    assert later["startTime"] == NOW_TEXT
    assert all(c["lastTransitionTime"] == NOW_TEXT for c in later["conditions"])
    stopped = pod_status(pod, observed(CRASHED, sandboxes=(sandbox(state="notready"),)), now_ns=NOW + 30 * S,
                         previous=first)
    ready_to_start = stopped["conditions"][0]
    assert ready_to_start["status"] == "False" and ready_to_start["lastTransitionTime"] == "2026-01-01T00:01:30Z"
    failed = {**first, "phase": "Failed"}
    assert pod_status(pod, observed(ctr("a")), now_ns=NOW, previous=failed)["phase"] == "Failed"


def test_a_lost_running_container_reads_terminated_unknown() -> None:
    pod = make_pod("a")
    first = status_of(pod, observed(ctr("a", cid="c1")))
    later = status_of(pod, observed(ctr("a", UNKNOWN, cid="c1")), previous=first)
    (app,) = later["containerStatuses"]
    assert app["state"]["terminated"]["reason"] == "ContainerStatusUnknown" and app["restartCount"] == 1


def test_a_terminated_status_survives_the_containers_removal() -> None:
    pod = make_pod("a", policy=NEVER)
    first = status_of(pod, observed(CRASHED))
    later = status_of(pod, observed(), previous=first)
    assert later["containerStatuses"][0]["state"] == first["containerStatuses"][0]["state"]
    assert later["phase"] == "Failed"


def test_host_network_pods_get_the_host_ips() -> None:
    status = status_of(make_pod("a", host_network=True), observed(ctr("a"), sandboxes=(sandbox(ips=(), mode="node"),)))
    assert (status["podIP"], status["podIPs"]) == ("192.168.1.10", [{"ip": "192.168.1.10"}])


def test_qos_class_is_reported() -> None:
    assert status_of(make_pod("a"), None)["qosClass"] == "BestEffort"


@pytest.mark.parametrize(("ips", "host", "want"), [
    (("10.0.0.5", "fd00::5", "10.0.0.6"), (), ["10.0.0.5", "fd00::5"]),
    (("10.0.0.5", "fd00::5"), ("fd00::1",), ["fd00::5", "10.0.0.5"]),
    (("fd00::5", "bogus"), ("10.0.0.1",), ["fd00::5"]),
])
def test_sort_pod_ips(ips: tuple[str, ...], host: tuple[str, ...], want: list[str]) -> None:
    assert sort_pod_ips(ips, host) == want


def test_rfc3339() -> None:
    assert rfc3339(T0 + 1_500_000_000) == "2026-01-01T00:00:01Z"
    assert rfc3339(0) is None
