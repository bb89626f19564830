"""The eviction manager's parts on their own: threshold parsing, observations from a hand-built Summary, each
ranker, and ``synchronize`` pass by pass on a virtual clock (no runtime: the Summary is what the test says)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from kubeharness.agent.config.kubelet import AgentConfig, ConfigError, EvictionThreshold, ReclaimValue
from kubeharness.agent.events import Recorder
from kubeharness.agent.eviction import rank, signals
from kubeharness.agent.eviction.manager import Eviction, EvictionManager, is_critical
from kubeharness.agent.eviction.messages import eviction_message
from kubeharness.agent.pod.defaults import pod_from_object
from kubeharness.agent.pod.model import Pod
from kubeharness.agent.stats.types import (
    ContainerStats,
    FsStats,
    MemoryStats,
    NodeStats,
    PodReference,
    PodStats,
    ProcessStats,
    RlimitStats,
    Summary,
)
from kubeharness.clock import VirtualClock

MI, GI = 2**20, 2**30
HEAD = {"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration"}


def config(**fields: Any) -> AgentConfig:
    return AgentConfig.from_dict({**HEAD, **fields})


def make_pod(name: str, *, requests: dict[str, str] | None = None, limits: dict[str, str] | None = None,
             priority: int = 0, evictable: bool = True, containers: Sequence[str] = ("x",),
             extra: dict[str, Any] | None = None) -> Pod:
    resources: dict[str, Any] = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    meta: dict[str, Any] = {"name": name, "namespace": "default"}
    if evictable:
        meta["annotations"] = {"kubeharness.io/evictable": "true"}
    spec: dict[str, Any] = {"containers": [{"name": c, "image": "busybox", "resources": resources} for c in containers],
                            "priority": priority, **(extra or {})}
    return pod_from_object({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}, "file", "node")


def pod_stats(pod: Pod, t: int, memory: int = 0, rootfs: int = 0, logs: int = 0, processes: int = 0) -> PodStats:
    each = memory // len(pod.spec.containers)
    containers = tuple(ContainerStats(c.name, 0, memory=MemoryStats(t, working_set_bytes=each),
                                      rootfs=FsStats(t, used_bytes=rootfs, inodes_used=rootfs // 4096),
                                      logs=FsStats(t, used_bytes=logs, inodes_used=1))
                       for c in pod.spec.containers)
    return PodStats(PodReference(pod.name, pod.namespace, pod.uid), 0, containers=containers,
                    memory=MemoryStats(t, working_set_bytes=memory), process_stats=ProcessStats(processes))


def summary(t: int, *, memory_available: int = 8 * GI, working_set: int = 0, fs_available: int = 50 * GI,
            fs_capacity: int = 100 * GI, inodes_free: int = 10**6, inodes: int = 10**6, image_fs: bool = False,
            pids: tuple[int, int] | None = None, pods: Sequence[PodStats] = ()) -> Summary:
    fs = FsStats(t, available_bytes=fs_available, capacity_bytes=fs_capacity, inodes_free=inodes_free, inodes=inodes)
    own = FsStats(t, available_bytes=90 * GI, capacity_bytes=200 * GI, inodes_free=10**6, inodes=2 * 10**6)
    node = NodeStats("node", 0, memory=MemoryStats(t, available_bytes=memory_available, working_set_bytes=working_set),
                     fs=fs, image_fs=own if image_fs else fs,
                     rlimit=RlimitStats(t, max_pid=pids[0], num_of_running_processes=pids[1]) if pids else None)
    return Summary(node, tuple(pods))


# ---- thresholds -----------------------------------------------------------------------------------------


def test_soft_thresholds_take_their_grace_periods_and_minimum_reclaim_applies_to_both() -> None:
    c = config(evictionSoft={"memory.available": "1Gi", "nodefs.available": "15%"},
               evictionSoftGracePeriod={"memory.available": "1m30s", "nodefs.available": "10s"},
               evictionMinimumReclaim={"memory.available": "500Mi", "nodefs.available": "5%"},
               evictionMaxPodGracePeriod=20)
    assert c.eviction_soft["memory.available"] == EvictionThreshold(
        "memory.available", quantity=GI, grace_period_s=90, min_reclaim=ReclaimValue(quantity=500 * MI))
    assert c.eviction_soft["nodefs.available"].grace_period_s == 10
    assert c.eviction_hard["memory.available"].min_reclaim == ReclaimValue(quantity=500 * MI)
    assert c.eviction_hard["nodefs.available"].min_reclaim == ReclaimValue(percent=5)
    assert c.eviction_hard["imagefs.available"].min_reclaim is None
    assert c.eviction_max_pod_grace_period_s == 20


@pytest.mark.parametrize(("fields", "message"), [
    ({"evictionSoft": {"memory.available": "1Gi"}},
     "grace period must be specified for the soft eviction threshold memory.available"),
    ({"evictionSoftGracePeriod": {"memory.available": "-1s"}},
     "invalid eviction grace period specified: -1s, must be a positive value"),
    ({"evictionSoftGracePeriod": {"memory.free": "1s"}}, "unsupported eviction signal memory.free"),
    ({"evictionMinimumReclaim": {"memory.available": "0%"}},
     "eviction percentage minimum reclaim memory.available must be positive: 0%"),
    ({"evictionMinimumReclaim": {"memory.available": "-1Mi"}},
     "negative eviction minimum reclaim specified for memory.available"),
    ({"evictionHard": {"memory.available": "0"}}, "eviction threshold memory.available must be positive: 0"),
    ({"evictionHard": {"memory.available": "-1Mi"}}, "eviction threshold memory.available must be positive: -1Mi"),
    ({"evictionSoft": {"memory.available": "x"}, "evictionSoftGracePeriod": {"memory.available": "1s"}},
     "evictionSoft.memory.available: 'x' is not a quantity"),
    ({"evictionMaxPodGracePeriod": "30s"}, "evictionMaxPodGracePeriod: must be an integer"),
])
def test_bad_eviction_settings_are_refused_with_kubelets_words(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        config(**fields)


def test_zero_and_hundred_percent_switch_a_signal_off() -> None:
    c = config(evictionHard={"memory.available": "100%", "nodefs.available": "0%", "pid.available": "5%"})
    assert set(c.eviction_hard) == {"pid.available"}


def test_quantities_print_as_go_prints_them() -> None:
    assert [signals.go_quantity(v) for v in (100 * MI, 80 * MI, 1536, 512, 0, 3 * GI + MI)] == \
        ["100Mi", "80Mi", "1536", "512", "0", "3073Mi"]
    assert [signals.go_quantity(v, "DecimalSI") for v in (5000, 1500, 10**9, 7)] == ["5k", "1500", "1G", "7"]
    assert signals.go_quantity(10**9, "DecimalExponent") == "1e9"
    c = config(evictionHard={"memory.available": "100M", "nodefs.available": "1Gi", "pid.available": "1e3"})
    assert (c.eviction_hard["memory.available"].quantity_format, c.eviction_hard["nodefs.available"].quantity_format,
            c.eviction_hard["pid.available"].quantity_format) == ("DecimalSI", "BinarySI", "DecimalExponent")


def test_a_percentage_is_a_float32_fraction_of_the_capacity_as_in_kubelet() -> None:
    # float32(0.1) is 0.100000001490116..., so 10% of 10Gi is 16 bytes more than a tenth
    assert signals.percent_quantity(10, 10 * GI) == GI + 16
    assert signals.percent_quantity(50, 10 * GI) == 5 * GI
    assert signals.percent_quantity(5, 10**6) == 50000


# ---- observations ---------------------------------------------------------------------------------------


def test_observations_from_a_summary() -> None:
    obs = signals.observe(summary(7, memory_available=3 * GI, working_set=GI, fs_available=10 * GI, inodes_free=400,
                                  inodes=1000, pids=(4096, 96)))
    assert obs["memory.available"] == signals.Observation(3 * GI, 4 * GI, 7)
    assert obs["nodefs.available"] == signals.Observation(10 * GI, 100 * GI, 7)
    assert obs["nodefs.inodesFree"] == signals.Observation(400, 1000, 7, "DecimalSI")
    assert obs["imagefs.available"] == obs["nodefs.available"]
    assert obs["pid.available"] == signals.Observation(4000, 4096, 7, "DecimalSI")


def test_a_missing_figure_gives_no_observation_and_meets_no_threshold() -> None:
    s = Summary(NodeStats("node", 0, memory=MemoryStats(1, available_bytes=10), fs=FsStats(1, available_bytes=1)))
    obs = signals.observe(s)
    assert obs == {}
    assert signals.thresholds_met(config().eviction_hard.values(), obs) == []


def test_thresholds_met_with_and_without_the_minimum_reclaim() -> None:
    t = EvictionThreshold("memory.available", quantity=100 * MI, min_reclaim=ReclaimValue(quantity=50 * MI))
    obs = {"memory.available": signals.Observation(120 * MI, GI, 1)}
    assert signals.thresholds_met([t], obs) == []
    assert signals.thresholds_met([t], obs, enforce_min_reclaim=True) == [t]
    obs = {"memory.available": signals.Observation(100 * MI, GI, 1)}
    assert signals.thresholds_met([t], obs) == []  # equal is not below


# ---- rankers --------------------------------------------------------------------------------------------


def short(pod: Pod) -> str:
    return pod.name.removesuffix("-node")  # a static pod's name ends with the node's


def names(pods: Sequence[Pod]) -> list[str]:
    return [short(p) for p in pods]


def test_memory_ranking_over_requests_then_priority_then_usage_above_requests() -> None:
    best = make_pod("best")  # BestEffort, 100Mi over its (zero) request
    under = make_pod("under", requests={"memory": "500Mi"})  # Burstable under its request
    over_big = make_pod("over-big", requests={"memory": "100Mi"})
    over_high = make_pod("over-high", requests={"memory": "100Mi"}, priority=10)
    nostats = make_pod("nostats")
    usage = {"best": 100 * MI, "under": 400 * MI, "over-big": 400 * MI, "over-high": 900 * MI}
    stats = {p.uid: pod_stats(p, 1, memory=usage[short(p)]) for p in (best, under, over_big, over_high)}
    ranked = rank.rank_memory_pressure([under, over_high, best, over_big, nostats], lambda p: stats.get(p.uid))
    assert names(ranked) == ["nostats", "over-big", "best", "over-high", "under"]


def test_disk_ranking_uses_ephemeral_storage_of_layers_logs_and_local_volumes() -> None:
    vol = make_pod("vol", extra={"volumes": [{"name": "scratch", "emptyDir": {}}, {"name": "ram",
                                                                                  "emptyDir": {"medium": "Memory"}}]})
    small = make_pod("small", requests={"ephemeral-storage": "1Gi"})
    big = make_pod("big")
    stats = {vol.uid: PodStats(PodReference("vol", "default", vol.uid), 0, volumes=(
                 signals_volume("scratch", 300 * MI), signals_volume("ram", 5 * GI))),
             small.uid: pod_stats(small, 1, rootfs=900 * MI),
             big.uid: pod_stats(big, 1, rootfs=100 * MI, logs=100 * MI)}
    ranker = rank.rankers(dedicated_image_fs=False)["nodefs.available"]
    assert names(ranker([small, big, vol], lambda p: stats.get(p.uid))) == ["vol", "big", "small"]
    assert rank.local_volume_names(vol) == ["scratch"]
    # with a dedicated image filesystem, nodefs counts only logs and volumes, imagefs only writable layers
    dedicated = rank.rankers(dedicated_image_fs=True)
    assert names(dedicated["imagefs.available"]([vol, big], lambda p: stats.get(p.uid))) == ["big", "vol"]
    assert names(dedicated["nodefs.available"]([big, vol], lambda p: stats.get(p.uid))) == ["vol", "big"]


def signals_volume(name: str, used: int) -> Any:
    from kubeharness.agent.stats.types import VolumeStats
    return VolumeStats(name, FsStats(1, used_bytes=used, inodes_used=1))


def test_pid_ranking_by_priority_then_process_count() -> None:
    low_few, low_many, high = make_pod("low-few"), make_pod("low-many"), make_pod("high", priority=100)
    counts = {"low-few": 2, "low-many": 50, "high": 500}
    stats = {p.uid: pod_stats(p, 1, processes=counts[short(p)]) for p in (low_few, low_many, high)}
    assert names(rank.rank_pid_pressure([high, low_few, low_many], lambda p: stats.get(p.uid))) == \
        ["low-many", "low-few", "high"]


# ---- the manager, pass by pass ------------------------------------------------------------------------


class Harness:
    def __init__(self, thresholds: Sequence[EvictionThreshold], pods: Sequence[Pod], **kwargs: Any) -> None:
        self.clock = VirtualClock()
        self.pods = list(pods)
        self.summary_value = summary(0)
        self.evicted: list[Eviction] = []
        self.reclaimed: list[str] = []
        self.freed_to = 0  # what a reclaim leaves available (the disk test)
        self.recorder = Recorder(self.clock, "node")
        self.manager = EvictionManager(thresholds, self.clock, summary=self.read, active_pods=lambda: self.pods,
                                       evict=self.evict, cleaned_up=lambda p: True, recorder=self.recorder, **kwargs)

    async def read(self) -> Summary:
        return self.summary_value

    def evict(self, e: Eviction) -> None:
        self.evicted.append(e)
        self.pods.remove(e.pod)

    def memory(self, available: int, usage: dict[str, int]) -> None:
        t = self.clock.now_ns()
        self.summary_value = summary(t, memory_available=available, working_set=GI, pods=[
            pod_stats(p, t, memory=usage.get(short(p), 0)) for p in self.pods])

    async def step(self, seconds: float = 10) -> Pod | None:
        await self.clock.advance(seconds)
        return await self.manager.synchronize()


HARD_MEMORY = EvictionThreshold("memory.available", quantity=100 * MI)


async def test_a_hard_threshold_evicts_at_once_with_kubelets_message_and_event() -> None:
    x = make_pod("x")
    h = Harness([HARD_MEMORY], [x])
    h.memory(200 * MI, {"x": 300 * MI})
    assert await h.step() is None and h.manager.node_conditions == []
    h.memory(80 * MI, {"x": 300 * MI})
    assert await h.step() is x
    (e,) = h.evicted
    assert e.message == ("The node was low on resource: memory. Threshold quantity: 100Mi, available: 80Mi. "
                         "Container x was using 300Mi, request is 0, has larger consumption of memory. ")
    assert e.grace_period_s == 1  # kubelet's immediateEvictionGracePeriodSeconds
    met, event = [ev.to_object("node") for ev in h.recorder._events.values()]
    assert (met["type"], met["reason"], met["message"], met["involvedObject"]["kind"]) == \
        ("Warning", "EvictionThresholdMet", "Attempting to reclaim memory", "Node")  # kubelet's, before reclaim
    assert (event["type"], event["reason"], event["message"], event["involvedObject"]["name"]) == \
        ("Warning", "Evicted", e.message, "x-node")
    assert h.manager.node_conditions == ["MemoryPressure"]


async def test_the_message_names_requests_as_written_and_only_containers_over_them() -> None:
    p = make_pod("p", requests={"memory": "0.5Gi"}, containers=("a", "b"))
    obs = {"memory.available": signals.Observation(50 * MI, 4 * GI, 1)}
    stats = PodStats(PodReference("p", "default", p.uid), 0, containers=(
        ContainerStats("a", 0, memory=MemoryStats(1, working_set_bytes=600 * MI)),
        ContainerStats("b", 0, memory=MemoryStats(1, working_set_bytes=100 * MI))))
    message = eviction_message("memory", p, stats, [EvictionThreshold("memory.available", percent=5)], obs)
    assert message == ("The node was low on resource: memory. Threshold quantity: 214748368, available: 50Mi. "
                       "Container a was using 600Mi, request is 512Mi, has larger consumption of memory. ")


async def test_a_soft_threshold_waits_out_its_grace_period_and_caps_the_pods_grace() -> None:
    x = make_pod("x")
    soft = EvictionThreshold("memory.available", quantity=GI, grace_period_s=30)
    h = Harness([soft], [x], max_pod_grace_period_s=7)
    for _ in range(3):  # met at 10 s, 20 s, 30 s: 0, 10, 20 s of its 30 s grace
        h.memory(500 * MI, {"x": 300 * MI})
        assert await h.step() is None
        assert h.manager.node_conditions == ["MemoryPressure"]  # the condition does not wait for the grace
    h.memory(500 * MI, {"x": 300 * MI})
    assert await h.step() is x
    assert h.evicted[0].grace_period_s == 7  # min(the pod's 30 s, evictionMaxPodGracePeriod)


async def test_a_soft_threshold_that_clears_starts_its_grace_over() -> None:
    soft = EvictionThreshold("memory.available", quantity=GI, grace_period_s=15)
    h = Harness([soft], [make_pod("x")])
    h.memory(500 * MI, {})
    assert await h.step() is None
    h.memory(2 * GI, {})
    assert await h.step() is None
    h.memory(500 * MI, {})
    assert await h.step() is None  # first met again only now
    h.memory(500 * MI, {})
    assert await h.step() is None
    h.memory(500 * MI, {})
    assert await h.step() is not None


async def test_the_condition_clears_only_after_the_transition_period() -> None:
    h = Harness([HARD_MEMORY], [], pressure_transition_period_s=60)
    h.memory(50 * MI, {})
    await h.step()
    assert h.manager.under("MemoryPressure")
    first = h.manager.conditions()[0]
    assert (first["type"], first["status"], first["reason"]) == \
        ("MemoryPressure", "True", "KubeletHasInsufficientMemory")
    h.memory(2 * GI, {})
    for _ in range(5):  # 10..50 s since last seen
        await h.step()
        assert h.manager.under("MemoryPressure")
    await h.step()  # 60 s
    assert not h.manager.under("MemoryPressure")
    conditions = {c["type"]: c for c in h.manager.conditions()}
    assert (conditions["MemoryPressure"]["status"], conditions["MemoryPressure"]["reason"]) == \
        ("False", "KubeletHasSufficientMemory")
    assert conditions["MemoryPressure"]["lastTransitionTime"] != first["lastTransitionTime"]
    assert (conditions["DiskPressure"]["status"], conditions["PIDPressure"]["reason"]) == \
        ("False", "KubeletHasSufficientPID")


async def test_one_pod_per_pass_and_only_with_fresh_stats() -> None:
    a, b = make_pod("a"), make_pod("b")
    h = Harness([HARD_MEMORY], [a, b])
    h.memory(50 * MI, {"a": 200 * MI, "b": 100 * MI})
    assert await h.step() is a
    assert await h.manager.synchronize() is None  # the same observation (no newer stats): nothing more
    assert names([e.pod for e in h.evicted]) == ["a"]
    h.memory(50 * MI, {"b": 100 * MI})
    assert await h.step() is b


async def test_critical_and_static_pods_are_never_evicted_the_evictable_annotation_opts_in() -> None:
    static = make_pod("static", evictable=False)
    critical = make_pod("critical", priority=2_000_000_000)
    ordinary = make_pod("ordinary")
    assert is_critical(static) and is_critical(critical) and not is_critical(ordinary)
    h = Harness([HARD_MEMORY], [static, critical, ordinary])
    h.memory(50 * MI, {"static": 900 * MI, "critical": 800 * MI, "ordinary": 10 * MI})
    assert await h.step() is ordinary
    h.memory(50 * MI, {"static": 900 * MI, "critical": 800 * MI})
    assert await h.step() is None and len(h.evicted) == 1


async def test_disk_pressure_reclaims_node_level_resources_first() -> None:
    x = make_pod("x")
    hard = EvictionThreshold("nodefs.available", percent=10)

    async def reclaim_containers() -> None:
        h.reclaimed.append("containers")

    async def reclaim_images() -> None:
        h.reclaimed.append("images")
        t = h.clock.now_ns()
        h.summary_value = summary(t, fs_available=h.freed_to, pods=[pod_stats(x, t, rootfs=GI)])

    h = Harness([hard], [x], reclaim_containers=reclaim_containers, reclaim_images=reclaim_images)
    h.freed_to = 20 * GI
    h.summary_value = summary(h.clock.now_ns() + 1, fs_available=5 * GI, pods=[pod_stats(x, 1, rootfs=GI)])
    assert await h.step() is None  # images freed enough
    assert h.reclaimed == ["containers", "images"] and h.evicted == []
    assert h.manager.node_conditions == ["DiskPressure"]
    h.freed_to = 8 * GI  # not enough this time
    h.summary_value = summary(h.clock.now_ns() + 10**10, fs_available=5 * GI, pods=[pod_stats(x, 1, rootfs=GI)])
    assert await h.step() is x
    assert h.evicted[0].message.startswith("The node was low on resource: ephemeral-storage. Threshold quantity: ")
    assert "Threshold quantity: 10737418400, available: 5Gi. Container x was using 1Gi, request is 0" \
        in h.evicted[0].message


async def test_admission_under_pressure() -> None:
    best, burst = make_pod("best", evictable=True), make_pod("burst", requests={"memory": "1Mi"})
    static_best = make_pod("static-best", evictable=False)
    tolerant = make_pod("tolerant", extra={"tolerations": [{"key": "node.kubernetes.io/memory-pressure",
                                                            "operator": "Exists", "effect": "NoSchedule"}]})
    h = Harness([HARD_MEMORY, EvictionThreshold("nodefs.available", quantity=GI)], [])
    assert h.manager.admit(best) is None
    h.memory(50 * MI, {})
    await h.step()
    assert h.manager.admit(best) == ("Evicted", "The node had condition: [MemoryPressure]. ")
    assert h.manager.admit(burst) is None and h.manager.admit(static_best) is None
    assert h.manager.admit(tolerant) is None
    t = h.clock.now_ns() + 10**10
    h.summary_value = summary(t, memory_available=50 * MI, fs_available=MI)
    await h.step()
    assert h.manager.admit(burst) == ("Evicted", "The node had condition: [MemoryPressure DiskPressure]. ")
    assert h.manager.admit(tolerant) is not None


async def test_the_loop_waits_for_the_evicted_pod_then_runs_every_monitoring_period() -> None:
    x, y = make_pod("x"), make_pod("y")
    h = Harness([HARD_MEMORY], [x, y])
    gone: set[str] = set()
    h.manager.cleaned_up = lambda p: p.uid in gone
    h.memory(50 * MI, {"x": 10 * MI, "y": 5 * MI})
    import asyncio
    task = asyncio.ensure_future(h.manager.run())
    try:
        await h.clock.advance(0)
        assert names([e.pod for e in h.evicted]) == ["x"]
        await h.clock.advance(20)  # x not cleaned up: the loop waits, polling (up to 30 s)
        h.memory(50 * MI, {"y": 5 * MI})
        await h.clock.advance(5)
        assert len(h.evicted) == 1
        gone.add(x.uid)
        await h.clock.advance(1)  # the poll sees it gone, the next pass evicts y
        assert names([e.pod for e in h.evicted]) == ["x", "y"]
    finally:
        task.cancel()


def test_loading_a_file_with_every_eviction_field(tmp_path: Path) -> None:
    path = tmp_path / "k.yaml"
    path.write_text("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"
                    "evictionSoft: {pid.available: '10%'}\nevictionSoftGracePeriod: {pid.available: 2m}\n"
                    "evictionMaxPodGracePeriod: 60\n")
    c = AgentConfig.load(path)
    assert c.eviction_soft == {"pid.available": EvictionThreshold("pid.available", percent=10, grace_period_s=120)}
    assert "evictionSoft" not in c.ignored and c.warnings == ()


def test_a_threshold_on_a_signal_the_agent_does_not_observe_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    observed = set(signals.observe(summary(0)))
    assert not observed & signals.NOT_OBSERVED  # what the warning says is so
    caplog.set_level("WARNING", logger="kubeharness.agent.eviction.manager")
    Harness([HARD_MEMORY, EvictionThreshold("containerfs.available", quantity=GI)], [])
    warned = [r.getMessage() for r in caplog.records]
    assert warned == ["eviction manager: the containerfs.available signal is accepted but this agent does not "
                      "observe it: a threshold on it is never met"]
