"""QoS class, cgroup parent and the Linux resources kubelet sends to CRI."""

from __future__ import annotations

import pytest

from kubeharness.agent.pod.model import Container, Pod, PodSpec, Resources
from kubeharness.agent.pod.qos import (
    BEST_EFFORT,
    BURSTABLE,
    GUARANTEED,
    SYSTEMD,
    container_resources,
    milli_cpu_to_quota,
    milli_cpu_to_shares,
    oom_score_adj,
    pod_cgroup_parent,
    pod_qos,
    sandbox_resources,
    systemd_slice_path,
)

MI = 1024 * 1024
GI = 1024 * MI
UID = "1234-abcd-5678"


def res(cpu_req: int = 0, mem_req: int = 0, cpu_lim: int = 0, mem_lim: int = 0) -> Resources:
    requests = {k: v for k, v in (("cpu", cpu_req), ("memory", mem_req)) if v}
    limits = {k: v for k, v in (("cpu", cpu_lim), ("memory", mem_lim)) if v}
    return Resources(requests=requests, limits=limits)


def pod_of(*resources: Resources, init: tuple[Resources, ...] = (), raw: dict[str, object] | None = None,
           source: str = "file", priority: int = 0) -> Pod:
    containers = tuple(Container(name=f"c{i}", image="busybox", resources=r) for i, r in enumerate(resources))
    inits = tuple(Container(name=f"i{i}", image="busybox", resources=r) for i, r in enumerate(init))
    return Pod(uid=UID, name="p", namespace="default", source=source, raw=raw or {},
               spec=PodSpec(containers=containers, init_containers=inits, priority=priority))


QOS_CASES = [
    ("nothing set", pod_of(res()), BEST_EFFORT),
    ("zero quantities count as unset", pod_of(Resources(requests={"cpu": 0}, limits={"memory": 0})), BEST_EFFORT),
    ("only other resources", pod_of(Resources(requests={"ephemeral-storage": 10})), BEST_EFFORT),
    ("requests equal limits", pod_of(res(500, 64 * MI, 500, 64 * MI)), GUARANTEED),
    ("two guaranteed containers", pod_of(res(100, MI, 100, MI), res(200, MI, 200, MI)), GUARANTEED),
    ("request below limit", pod_of(res(250, 64 * MI, 500, 64 * MI)), BURSTABLE),
    ("memory request only", pod_of(res(mem_req=64 * MI)), BURSTABLE),
    ("cpu limit without memory limit", pod_of(res(500, 64 * MI, 500, 0)), BURSTABLE),
    ("one container guaranteed, one best effort", pod_of(res(100, MI, 100, MI), res()), BURSTABLE),
    ("a burstable init container", pod_of(res(100, MI, 100, MI), init=(res(mem_req=MI),)), BURSTABLE),
    ("guaranteed init and app containers", pod_of(res(100, MI, 100, MI), init=(res(50, MI, 50, MI),)), GUARANTEED),
]


@pytest.mark.parametrize(("pod", "qos"), [c[1:] for c in QOS_CASES], ids=[c[0] for c in QOS_CASES])
def test_pod_qos(pod: Pod, qos: str) -> None:
    assert pod_qos(pod) == qos


GUARANTEED_POD = pod_of(res(500, 64 * MI, 500, 64 * MI))
BURSTABLE_POD = pod_of(res(mem_req=64 * MI))
BEST_EFFORT_POD = pod_of(res())

PARENT_CASES = [
    (GUARANTEED_POD, {}, f"/kubepods/pod{UID}"),
    (BURSTABLE_POD, {}, f"/kubepods/burstable/pod{UID}"),
    (BEST_EFFORT_POD, {}, f"/kubepods/besteffort/pod{UID}"),
    (BURSTABLE_POD, {"cgroup_root": "/custom/root"}, f"/custom/root/kubepods/burstable/pod{UID}"),
    (BURSTABLE_POD, {"cgroups_per_qos": False}, ""),
    (GUARANTEED_POD, {"cgroup_driver": SYSTEMD}, "/kubepods.slice/kubepods-pod1234_abcd_5678.slice"),
    (BURSTABLE_POD, {"cgroup_driver": SYSTEMD},
     "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_abcd_5678.slice"),
    (BEST_EFFORT_POD, {"cgroup_driver": SYSTEMD},
     "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1234_abcd_5678.slice"),
]


@pytest.mark.parametrize(("pod", "options", "parent"), PARENT_CASES)
def test_pod_cgroup_parent(pod: Pod, options: dict[str, object], parent: str) -> None:
    assert pod_cgroup_parent(pod, **options) == parent  # type: ignore[arg-type]


def test_unknown_cgroup_driver_is_refused() -> None:
    with pytest.raises(ValueError, match="cgroup driver"):
        pod_cgroup_parent(BURSTABLE_POD, cgroup_driver="cgroupv3")


def test_systemd_root_slice() -> None:
    assert systemd_slice_path(()) == "/"


@pytest.mark.parametrize(("milli", "shares"), [(0, 2), (1, 2), (100, 102), (1000, 1024), (500_000, 262144)])
def test_cpu_shares(milli: int, shares: int) -> None:
    assert milli_cpu_to_shares(milli) == shares


@pytest.mark.parametrize(("milli", "quota"), [(0, 0), (1, 1000), (10, 1000), (250, 25_000), (2000, 200_000)])
def test_cpu_quota(milli: int, quota: int) -> None:
    assert milli_cpu_to_quota(milli) == quota


OOM_CASES = [
    ("guaranteed", GUARANTEED_POD, -997),
    ("best effort", BEST_EFFORT_POD, 1000),
    ("burstable: a quarter of the node", pod_of(res(mem_req=GI)), 750),
    ("burstable: almost nothing requested", pod_of(res(cpu_req=100)), 999),
    ("burstable: more than the node", pod_of(res(mem_req=8 * GI)), 3),
    ("node critical", pod_of(res(), raw={"spec": {"priorityClassName": "system-node-critical"}}), -997),
    ("cluster critical is not node critical", pod_of(res(), raw={"spec": {"priorityClassName": "x"}}), 1000),
]


@pytest.mark.parametrize(("pod", "adj"), [c[1:] for c in OOM_CASES], ids=[c[0] for c in OOM_CASES])
def test_oom_score_adj(pod: Pod, adj: int) -> None:
    assert oom_score_adj(pod, pod.spec.containers[0], 4 * GI) == adj


def test_container_resources() -> None:
    pod = pod_of(res(250, 64 * MI, 500, 128 * MI))
    r = container_resources(pod, pod.spec.containers[0], memory_capacity=4 * GI)
    assert (r.cpu_shares, r.cpu_quota, r.cpu_period, r.memory_limit_in_bytes) == (256, 50_000, 100_000, 128 * MI)
    assert r.oom_score_adj == 1000 - (1000 * 64 * MI) // (4 * GI)


def test_container_resources_without_limits_or_quota() -> None:
    pod = pod_of(res())
    r = container_resources(pod, pod.spec.containers[0], memory_capacity=GI)
    assert (r.cpu_shares, r.cpu_quota, r.cpu_period, r.memory_limit_in_bytes, r.oom_score_adj) == (2, 0, 100_000, 0,
                                                                                                 1000)
    r = container_resources(pod, pod.spec.containers[0], memory_capacity=GI, cpu_cfs_quota=False)
    assert (r.cpu_quota, r.cpu_period) == (0, 0)


def test_cpu_shares_follow_the_limit_when_no_request() -> None:
    pod = pod_of(Resources(limits={"cpu": 1000}))
    assert container_resources(pod, pod.spec.containers[0], memory_capacity=GI).cpu_shares == 1024


def test_sandbox_resources_take_the_larger_of_apps_and_init() -> None:
    pod = pod_of(res(100, MI, 200, 2 * MI), res(100, MI, 200, 2 * MI), init=(res(300, MI, 300, 3 * MI),))
    r = sandbox_resources(pod)
    assert (r.cpu_shares, r.cpu_quota, r.memory_limit_in_bytes) == (milli_cpu_to_shares(300), 40_000, 4 * MI)
