"""Unit tests of the agent's garbage collection policies (``agent.gc``): containers, sandboxes, pod log
directories and images, over hand-built runtime lists and a virtual clock."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeharness.agent.config.kubelet import AgentConfig, ConfigError
from kubeharness.agent.events import WARNING, Recorder
from kubeharness.agent.gc import containers as cgc
from kubeharness.agent.gc import images as igc
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
from kubeharness.clock import NS_PER_SECOND, VirtualClock
from kubeharness.wire.cri import api_pb2 as api

S = NS_PER_SECOND
NOW = 10_000 * S


def ctr(cid: str, name: str, attempt: int, state: str = EXITED, created_s: int = 0, sandbox: str = "sb1",
        ) -> ObservedContainer:
    return ObservedContainer(id=cid, name=name, sandbox_id=sandbox, state=state, attempt=attempt,
                             restart_count=attempt, created_ns=(created_s or 100 + attempt) * S)


def sbx(sid: str, attempt: int, state: str = NOTREADY, uid: str = "u1") -> ObservedSandbox:
    return ObservedSandbox(id=sid, name="p", namespace="default", uid=uid, attempt=attempt, state=state,
                           created_ns=(100 + attempt) * S)


def pods_of(*pods: ObservedPod) -> dict[str, ObservedPod]:
    return {p.uid: p for p in pods}


def never_gone(_: str) -> bool:
    return False


# ---- containers -----------------------------------------------------------------------------------------


def test_each_container_name_keeps_its_newest_dead_instance_and_loses_the_rest_oldest_first() -> None:
    pod = ObservedPod("u1", "p", "default", sandboxes=(sbx("sb1", 0, READY),), containers=(
        ctr("a3", "app", 3, RUNNING), ctr("a2", "app", 2), ctr("a1", "app", 1), ctr("a0", "app", 0),
        ctr("s1", "side", 1, CREATED), ctr("s0", "side", 0, UNKNOWN), ctr("x0", "once", 0)))
    plan = cgc.plan(pods_of(pod), never_gone, NOW)
    # running a3 is not evictable; of app's dead a2, a1, a0 the newest (a2) stays; created and unknown count as dead
    assert [c.id for c in plan.containers] == ["a0", "a1", "s0"]
    assert plan.sandboxes == ()


def test_attempt_orders_before_creation_time() -> None:
    pod = ObservedPod("u1", "p", "default", containers=(ctr("new", "app", 1, created_s=50),
                                                       ctr("old", "app", 0, created_s=90)))
    assert [c.id for c in cgc.plan(pods_of(pod), never_gone, NOW).containers] == ["old"]


def test_containers_younger_than_the_minimum_age_are_not_evictable() -> None:
    pod = ObservedPod("u1", "p", "default", containers=(ctr("a1", "app", 1, created_s=9_990), ctr("a0", "app", 0)))
    policy = cgc.ContainerGCPolicy(min_age_s=60)
    assert [c.id for c in cgc.plan(pods_of(pod), never_gone, NOW, policy).containers] == []
    assert [c.id for c in cgc.plan(pods_of(pod), never_gone, NOW + 60 * S, policy).containers] == ["a0"]


def test_a_gone_pod_loses_every_dead_container_once_all_sources_reported() -> None:
    pod = ObservedPod("gone", "p", "default", containers=(ctr("b1", "app", 1), ctr("b0", "app", 0),
                                                         ctr("r", "run", 0, RUNNING)))
    pods = pods_of(pod)
    assert [c.id for c in cgc.plan(pods, lambda uid: uid == "gone", NOW).containers] == ["b0", "b1"]
    # before every source has spoken a pod may only look gone: the per-name limit alone applies
    assert [c.id for c in cgc.plan(pods, lambda uid: uid == "gone", NOW, sources_ready=False).containers] == ["b0"]


def test_max_containers_cuts_units_evenly_then_the_oldest_overall() -> None:
    a = ObservedPod("u1", "p", "default", containers=(ctr("a2", "app", 2, created_s=300), ctr("a1", "app", 1,
                                                      created_s=200), ctr("a0", "app", 0, created_s=100)))
    b = ObservedPod("u2", "q", "default", containers=(ctr("b1", "app", 1, created_s=250),
                                                     ctr("b0", "app", 0, created_s=150)))
    policy = cgc.ContainerGCPolicy(max_per_pod_container=-1, max_containers=3)
    # 3 // 2 units = 1 each: a1, a0 and b0 go; 2 left, within 3
    assert [c.id for c in cgc.plan(pods_of(a, b), never_gone, NOW, policy).containers] == ["a0", "a1", "b0"]
    policy = cgc.ContainerGCPolicy(max_per_pod_container=-1, max_containers=1)
    # at least 1 per unit, then the oldest overall: b1 (attempt 1 < a2's 2)
    assert [c.id for c in cgc.plan(pods_of(a, b), never_gone, NOW, policy).containers] == ["a0", "a1", "b0", "b1"]


def test_sandboxes_of_a_living_pod_keep_the_newest_and_lose_older_dead_empty_ones() -> None:
    pod = ObservedPod("u1", "p", "default",
                      sandboxes=(sbx("s3", 3), sbx("s2", 2), sbx("s1", 1), sbx("s0", 0)),
                      containers=(ctr("c1", "app", 1, sandbox="s1"), ctr("c0", "app", 0, sandbox="s0")))
    plan = cgc.plan(pods_of(pod), never_gone, NOW)
    # s3 newest (kept though not ready); s2 empty; c0 is removed (older instance) so s0 goes too; s1 holds c1
    assert [c.id for c in plan.containers] == ["c0"]
    assert [s.id for s in plan.sandboxes] == ["s0", "s2"]


def test_sandboxes_of_a_gone_pod_all_go_unless_ready_or_holding_a_running_container() -> None:
    pod = ObservedPod("gone", "p", "default", sandboxes=(sbx("s2", 2, READY, "gone"), sbx("s1", 1, uid="gone"),
                                                        sbx("s0", 0, uid="gone")),
                      containers=(ctr("r", "app", 1, RUNNING, sandbox="s1"), ctr("d", "app", 0, sandbox="s0")))
    plan = cgc.plan(pods_of(pod), lambda uid: uid == "gone", NOW)
    assert [c.id for c in plan.containers] == ["d"]
    assert [s.id for s in plan.sandboxes] == ["s0"]


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from([RUNNING, EXITED, CREATED]),
                          st.integers(0, 3)), max_size=12))
def test_the_plan_never_takes_a_running_or_the_newest_dead_container(
        items: list[tuple[str, str, int]]) -> None:
    cs = tuple(ctr(f"c{i}", name, attempt, state, created_s=100 + i) for i, (name, state, attempt) in enumerate(items))
    pod = ObservedPod("u1", "p", "default", containers=cs)
    removed = {c.id for c in cgc.plan(pods_of(pod), never_gone, NOW).containers}
    for name in {c.name for c in cs}:
        dead = sorted((c for c in cs if c.name == name and c.state != RUNNING),
                      key=lambda c: (c.attempt, c.created_ns), reverse=True)
        assert {c.id for c in dead[1:]} == {c.id for c in dead} & removed
    assert not any(c.id in removed for c in cs if c.state == RUNNING)


def test_pod_log_directories_of_gone_pods() -> None:
    assert cgc.pod_uid_of_log_dir("default_web-node-1_1234-abcd") == "1234-abcd"
    assert cgc.pod_uid_of_log_dir("not-a-pod-dir") is None
    names = ["default_a_u1", "kube-system_b_u2", "stray", "x_y_"]
    assert cgc.log_dirs_to_remove(names, lambda uid: uid != "u1") == ["kube-system_b_u2"]


def test_a_containers_logs_go_with_it_but_nothing_outside_the_pod_logs_directory(tmp_path: Path) -> None:
    logs = tmp_path / "pods" / "default_p_u1" / "app"
    logs.mkdir(parents=True)
    for name in ("0.log", "0.log.20260101-000000", "0.log.20260101-000000.gz", "1.log", "10.log"):
        (logs / name).write_text("x")
    outside = tmp_path / "elsewhere.log"
    outside.write_text("keep")
    gc = cgc.ContainerGC(None, VirtualClock(), str(tmp_path / "pods"))  # type: ignore[arg-type]
    gc.remove_logs(str(logs / "0.log"))
    gc.remove_logs(str(outside))
    gc.remove_logs(str(tmp_path / "pods" / ".." / "elsewhere.log"))
    assert sorted(p.name for p in logs.iterdir()) == ["1.log", "10.log"]
    assert outside.read_text() == "keep"


# ---- images ---------------------------------------------------------------------------------------------


def image(iid: str, size: int = 100, pinned: bool = False, digests: tuple[str, ...] = ()) -> api.Image:
    return api.Image(id=iid, size=size, pinned=pinned, repo_tags=[f"x/{iid}:1"], repo_digests=list(digests))


def container_using(ref: str) -> api.Container:
    return api.Container(id="c-" + ref, image_ref=ref)


def test_records_are_first_detected_once_and_last_used_whenever_in_use() -> None:
    imgs = [image("i1"), image("i2", digests=("x/i2@sha256:d2",)), image("i3")]
    in_use = igc.images_in_use([container_using("i1"), container_using("x/i2@sha256:d2")])
    first = igc.detect({}, imgs, in_use, 100 * S)
    assert first == {"i1": igc.ImageRecord(100 * S, 100 * S, 100), "i2": igc.ImageRecord(100 * S, 100 * S, 100),
                     "i3": igc.ImageRecord(100 * S, 0, 100)}
    second = igc.detect(first, imgs[1:], set(), 200 * S)  # i1 gone from the runtime: forgotten
    assert second == {"i2": igc.ImageRecord(100 * S, 100 * S, 100), "i3": igc.ImageRecord(100 * S, 0, 100)}


def test_the_eviction_order_is_least_recently_used_then_earliest_detected_without_used_or_pinned() -> None:
    records = {"a": igc.ImageRecord(50 * S, 300 * S), "b": igc.ImageRecord(90 * S, 0), "c": igc.ImageRecord(10 * S, 0),
               "used": igc.ImageRecord(1 * S, 0), "pinned": igc.ImageRecord(1 * S, 0, pinned=True)}
    assert igc.eviction_order(records, {"used"}) == ["c", "b", "a"]


def test_bytes_to_free_uses_kubelets_whole_percents() -> None:
    policy = igc.ImageGCPolicy()
    assert igc.usage_percent(1000, 150) == 85
    assert igc.bytes_to_free(1000, 150, policy) == 50  # down to 80%: 200 available
    assert igc.bytes_to_free(1000, 151, policy) == 49  # 84.9% used counts as 85: kubelet truncates what is free
    assert igc.bytes_to_free(1000, 160, policy) == 0
    assert igc.bytes_to_free(1000, 2000, policy) == 0  # available above capacity counts as capacity


def test_images_younger_than_the_minimum_age_are_not_candidates() -> None:
    records = {"old": igc.ImageRecord(0, 0), "young": igc.ImageRecord(NOW - 119 * S, 0),
               "just": igc.ImageRecord(NOW - 120 * S, 0)}
    order = igc.eviction_order(records, set())
    assert igc.space_candidates(order, records, igc.ImageGCPolicy(min_age_s=120), NOW) == ["old", "just"]


def test_the_maximum_age_takes_images_unused_longer_once_the_agent_ran_that_long() -> None:
    records = {"stale": igc.ImageRecord(0, NOW - 3601 * S), "fresh": igc.ImageRecord(0, NOW - 3599 * S),
               "never": igc.ImageRecord(NOW - 10 * S, 0)}
    order = igc.eviction_order(records, set())
    policy = igc.ImageGCPolicy(max_age_s=3600)
    assert igc.too_old(order, records, policy, NOW, began_ns=NOW - 3600 * S) == []
    assert igc.too_old(order, records, policy, NOW, began_ns=NOW - 3601 * S) == ["never", "stale"]
    assert igc.too_old(order, records, igc.ImageGCPolicy(), NOW, began_ns=0) == []


def test_image_gc_is_off_with_the_high_threshold_at_100_and_no_maximum_age() -> None:
    assert not igc.ImageGCPolicy(high_threshold_percent=100).enabled
    assert igc.ImageGCPolicy(high_threshold_percent=100, max_age_s=600).enabled
    assert igc.ImageGCPolicy().enabled


def test_free_disk_space_failed_is_a_node_event() -> None:
    recorder = Recorder(VirtualClock(), "node-1")
    recorder.record_node(WARNING, igc.FREE_DISK_SPACE_FAILED, igc.not_enough_message(50, 10))
    (item,) = recorder.event_list()["items"]
    assert item["involvedObject"] == {"kind": "Node", "name": "node-1", "uid": "node-1", "apiVersion": "v1"}
    assert item["metadata"]["namespace"] == "default" and item["type"] == "Warning"
    assert item["message"] == ("Failed to garbage collect required amount of images. Attempted to free 50 bytes, "
                               "but only found 10 bytes eligible to free.")


# ---- configuration --------------------------------------------------------------------------------------


def config(**fields: object) -> AgentConfig:
    return AgentConfig.from_dict({"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
                                  **fields})


def test_image_gc_fields_are_read_with_kubelets_defaults() -> None:
    assert (config().image_minimum_gc_age_s, config().image_maximum_gc_age_s) == (120.0, 0.0)
    parsed = config(imageMaximumGCAge="1h", imageMinimumGCAge="1m", imageGCHighThresholdPercent=90)
    assert (parsed.image_maximum_gc_age_s, parsed.image_minimum_gc_age_s) == (3600.0, 60.0)
    assert "imageMaximumGCAge" not in parsed.ignored


@pytest.mark.parametrize(("fields", "message"), [
    ({"imageMaximumGCAge": "1m"}, "imageMaximumGCAge: 1m0s must be greater than imageMinimumGCAge 2m0s"),
    ({"imageMaximumGCAge": "-1s"}, "imageMaximumGCAge: must not be negative"),
    ({"imageMinimumGCAge": "-1s"}, "imageMinimumGCAge: must not be negative"),
    ({"imageMaximumGCAge": "1h", "featureGates": {"ImageMaximumGCAge": False}},
     "imageMaximumGCAge: ImageMaximumGCAge feature gate is required"),
    ({"imageGCHighThresholdPercent": 101}, "imageGCHighThresholdPercent: must be between 0 and 100"),
    ({"imageGCLowThresholdPercent": 85}, "imageGCLowThresholdPercent: must be less than imageGCHighThresholdPercent"),
])
def test_bad_image_gc_fields_are_refused_with_kubelets_reasons(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config(**fields)
