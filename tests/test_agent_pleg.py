"""PLEG: labels and observed pods from CRI objects, and the pure event generator (relists against the CRI
emulator are in test_agent_pleg_cri.py)."""

from __future__ import annotations

import pytest

from kubeharness.agent.pleg.observed import EXITED, RUNNING, from_cri
from kubeharness.agent.pleg.pleg import (
    CONTAINER_CHANGED,
    CONTAINER_DIED,
    CONTAINER_REMOVED,
    CONTAINER_STARTED,
    PodLifecycleEvent,
    generate_events,
)
from kubeharness.agent.pod import labels
from kubeharness.agent.pod.model import Container, ContainerPort, Pod, PodSpec
from kubeharness.wire.cri import api_pb2 as api
from tests.test_agent_actions import ctr, observed, sandbox

POD = Pod(uid="uid-1", name="web", namespace="default", labels={"app": "web"}, annotations={"note": "x"},
          spec=PodSpec(containers=(Container(name="app", image="busybox", spec_hash="abc123",
                                             ports=(ContainerPort(8080, name="http"),)),),
                       init_containers=(Container(name="setup", image="busybox", spec_hash="def456"),),
                       termination_grace_period_seconds=45))


# -- labels --------------------------------------------------------------------------------------------------

def test_sandbox_labels_and_annotations() -> None:
    assert labels.sandbox_labels(POD) == {"app": "web", labels.POD_NAME: "web", labels.POD_NAMESPACE: "default",
                                          labels.POD_UID: "uid-1"}
    assert labels.user_labels(labels.sandbox_labels(POD)) == {"app": "web"}
    assert labels.sandbox_annotations(POD) == {"note": "x"}


def test_container_labels_and_annotations_round_trip() -> None:
    app, setup = POD.spec.containers[0], POD.spec.init_containers[0]
    assert labels.identity_from_labels(labels.container_labels(POD, app)) == labels.PodIdentity(
        "web", "default", "uid-1", "app")
    notes = labels.container_annotations(POD, app, restart_count=3, deletion_grace_period_s=10)
    assert notes[labels.CONTAINER_PORTS] == '[{"name":"http","containerPort":8080,"protocol":"TCP"}]'
    assert labels.notes_from_annotations(notes) == labels.ContainerNotes(
        spec_hash="abc123", restart_count=3, termination_message_path="/dev/termination-log",
        termination_message_policy="File", container_type=labels.TYPE_APP, pod_termination_grace_period_s=45,
        pod_deletion_grace_period_s=10, ports=app.ports)
    assert labels.container_annotations(POD, setup, 0)[labels.CONTAINER_TYPE] == labels.TYPE_INIT


def test_bad_annotations_read_as_defaults() -> None:
    notes = labels.notes_from_annotations({labels.CONTAINER_RESTART_COUNT: "many", labels.CONTAINER_PORTS: "{"})
    assert (notes.restart_count, notes.ports, notes.pod_termination_grace_period_s) == (0, (), None)


# -- observed pods from CRI objects --------------------------------------------------------------------------

def cri_sandbox(sid: str, uid: str = "uid-1", *, ready: bool = True, attempt: int = 0,
                created: int = 100) -> api.PodSandbox:
    pod = Pod(uid=uid, name=f"pod-{uid}", namespace="default", spec=POD.spec)
    return api.PodSandbox(id=sid, metadata=api.PodSandboxMetadata(name=pod.name, uid=uid, namespace="default",
                                                                  attempt=attempt),
                          state=api.SANDBOX_READY if ready else api.SANDBOX_NOTREADY, created_at=created,
                          labels=labels.sandbox_labels(pod))


def cri_container(cid: str, name: str = "app", uid: str = "uid-1", *,
                  state: api.ContainerState = api.CONTAINER_RUNNING,
                  created: int = 200, sandbox_id: str = "sb1", restarts: int = 0) -> api.Container:
    pod = Pod(uid=uid, name=f"pod-{uid}", namespace="default", spec=POD.spec)
    spec = next(c for c in POD.all_containers() if c.name == name)
    return api.Container(id=cid, pod_sandbox_id=sandbox_id, metadata=api.ContainerMetadata(name=name, attempt=restarts),
                         image=api.ImageSpec(image="busybox"), image_ref="sha256:bb", state=state, created_at=created,
                         labels=labels.container_labels(pod, spec),
                         annotations=labels.container_annotations(pod, spec, restarts))


def sandbox_status(sid: str, ip: str = "10.0.0.5", ready: bool = True) -> api.PodSandboxStatus:
    return api.PodSandboxStatus(
        id=sid, state=api.SANDBOX_READY if ready else api.SANDBOX_NOTREADY,
        network=api.PodSandboxNetworkStatus(ip=ip, additional_ips=[api.PodIP(ip="fd00::5")]),
        linux=api.LinuxPodSandboxStatus(namespaces=api.Namespace(options=api.NamespaceOption(network=api.POD))))


def test_from_cri_groups_by_uid_newest_first() -> None:
    pods = from_cri(
        [cri_sandbox("sb0", created=50, ready=False), cri_sandbox("sb1", attempt=1), cri_sandbox("other", "uid-2")],
        [cri_container("c1", state=api.CONTAINER_EXITED, created=200),
         cri_container("c2", created=300, restarts=1), cri_container("orphan", uid="uid-3")],
        statuses={"c1": api.ContainerStatus(id="c1", state=api.CONTAINER_EXITED, exit_code=2, reason="Error",
                                            started_at=210, finished_at=220, annotations={
                                                labels.CONTAINER_HASH: "abc123", labels.CONTAINER_RESTART_COUNT: "0"})},
        sandbox_statuses={"sb1": sandbox_status("sb1")})
    assert set(pods) == {"uid-1", "uid-2", "uid-3"}
    pod = pods["uid-1"]
    assert (pod.name, pod.namespace) == ("pod-uid-1", "default")
    assert [s.id for s in pod.sandboxes] == ["sb1", "sb0"]
    assert pod.sandboxes[0].network_mode == "pod" and pod.ips == ("10.0.0.5", "fd00::5")
    assert [c.id for c in pod.containers] == ["c2", "c1"]
    latest = pod.latest("app")
    assert latest is not None and (latest.state, latest.restart_count, latest.spec_hash) == (RUNNING, 1, "abc123")
    first = pod.latest_exited("app")
    assert first is not None and (first.exit_code, first.reason, first.finished_ns) == (2, "Error", 220)
    assert pods["uid-3"].name == "pod-uid-3" and not pods["uid-3"].sandboxes


def test_pod_ips_only_from_a_ready_newest_sandbox() -> None:
    pods = from_cri([cri_sandbox("sb1", ready=False)], [], sandbox_statuses={"sb1": sandbox_status("sb1", ready=False)})
    assert pods["uid-1"].ips == ()


# -- generate_events -----------------------------------------------------------------------------------------

E = PodLifecycleEvent
EVENT_CASES = [
    ("nothing", None, None, []),
    ("new pod: sandbox and container started", None, observed(ctr("a", cid="c")),
     [E("uid-1", CONTAINER_STARTED, "c"), E("uid-1", CONTAINER_STARTED, "sb1")]),
    ("no change", observed(ctr("a", cid="c")), observed(ctr("a", cid="c")), []),
    ("container died", observed(ctr("a", cid="c")), observed(ctr("a", EXITED, cid="c")),
     [E("uid-1", CONTAINER_DIED, "c")]),
    ("created counts as unknown", observed(), observed(ctr("a", "created", cid="c")),
     [E("uid-1", CONTAINER_CHANGED, "c")]),
    ("exited container removed", observed(ctr("a", EXITED, cid="c")), observed(),
     [E("uid-1", CONTAINER_REMOVED, "c")]),
    ("running container vanished: died, then removed", observed(ctr("a", cid="c")), observed(),
     [E("uid-1", CONTAINER_DIED, "c"), E("uid-1", CONTAINER_REMOVED, "c")]),
    ("sandbox stopped", observed(), observed(sandboxes=(sandbox(state="notready"),)),
     [E("uid-1", CONTAINER_DIED, "sb1")]),
    ("pod gone", observed(ctr("a", EXITED, cid="c"), sandboxes=(sandbox(state="notready"),)), None,
     [E("uid-1", CONTAINER_REMOVED, "c"), E("uid-1", CONTAINER_REMOVED, "sb1")]),
    ("restart: old died, new started", observed(ctr("a", cid="c1")),
     observed(ctr("a", EXITED, cid="c1"), ctr("a", cid="c2", created_ns=300)),
     [E("uid-1", CONTAINER_DIED, "c1"), E("uid-1", CONTAINER_STARTED, "c2")]),
]


@pytest.mark.parametrize(("old", "new", "events"), [c[1:] for c in EVENT_CASES], ids=[c[0] for c in EVENT_CASES])
def test_generate_events(old: object, new: object, events: list[PodLifecycleEvent]) -> None:
    assert generate_events(old, new) == events  # type: ignore[arg-type]
