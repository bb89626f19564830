"""Pod manifests into Pod records: kubelet's defaulting, validation and static-pod treatment."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest
import yaml

from kubeharness.agent.pod.defaults import (
    CONFIG_HASH,
    CONFIG_SEEN,
    CONFIG_SOURCE,
    ManifestError,
    container_hash,
    image_tag,
    pod_from_object,
    pods_from_manifest,
    rfc3339_nano,
    with_seen,
)
from kubeharness.agent.pod.model import ContainerPort, EnvVar, Pod
from kubeharness.clock import NS_PER_SECOND, VirtualClock

NODE = "node-a"
ORIGIN = "/etc/kubernetes/manifests/web.yaml"


def pod_obj(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"containers": [{"name": "app", "image": "busybox:1.36"}]}
    base.update(spec)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}, "spec": base}


def make(obj: dict[str, Any], source: str = "file") -> Pod:
    return pod_from_object(obj, source, NODE, origin=ORIGIN)


# ---- defaulting


def test_defaults() -> None:
    pod = make(pod_obj())
    spec = pod.spec
    assert (pod.namespace, spec.restart_policy, spec.dns_policy) == ("default", "Always", "ClusterFirst")
    assert spec.termination_grace_period_seconds == 30
    assert spec.active_deadline_seconds is None and spec.priority == 0
    assert (spec.host_network, spec.host_pid, spec.host_ipc) == (False, False, False)
    container = spec.containers[0]
    assert container.image_pull_policy == "IfNotPresent"
    assert container.termination_message_path == "/dev/termination-log"
    raw_spec = pod.raw["spec"]
    assert raw_spec["schedulerName"] == "default-scheduler"
    assert raw_spec["securityContext"] == {} and raw_spec["enableServiceLinks"] is True
    assert raw_spec["containers"][0]["terminationMessagePolicy"] == "File"
    assert pod.raw["status"] == {"phase": "Pending"}


@pytest.mark.parametrize(("image", "policy"), [
    ("busybox", "Always"), ("busybox:latest", "Always"), ("busybox:1.36", "IfNotPresent"),
    ("localhost:5000/busybox", "Always"), ("localhost:5000/busybox:1", "IfNotPresent"),
    ("busybox@sha256:" + "a" * 64, "IfNotPresent"), ("busybox:latest@sha256:" + "a" * 64, "Always"),
    ("registry.local:5000/team/app:v2@sha256:" + "b" * 64, "IfNotPresent"),
])
def test_image_pull_policy_follows_the_tag(image: str, policy: str) -> None:
    pod = make(pod_obj(containers=[{"name": "app", "image": image}]))
    assert pod.spec.containers[0].image_pull_policy == policy


def test_image_tag() -> None:
    assert image_tag("a/b:c") == "c" and image_tag("host:1/b") == "latest" and image_tag("b@sha256:x") == ""


def test_explicit_values_are_kept() -> None:
    obj = pod_obj(restartPolicy="Never", dnsPolicy="Default", terminationGracePeriodSeconds=0,
                  activeDeadlineSeconds=60, priority=2000001000, hostPID=True, hostIPC=True,
                  hostname="h1", subdomain="sub",
                  securityContext={"runAsUser": 1000, "runAsGroup": 2000, "fsGroup": 3000,
                                   "supplementalGroups": [4000, 4001]},
                  containers=[{"name": "app", "image": "busybox", "imagePullPolicy": "Never",
                               "command": ["sh", "-c"], "args": ["echo hi"], "workingDir": "/w",
                               "env": [{"name": "A", "value": "1"}, {"name": "B"}],
                               "ports": [{"containerPort": 80, "name": "http", "protocol": "UDP", "hostPort": 8080}],
                               "tty": True, "stdin": True}])
    obj["metadata"]["namespace"] = "kube-system"
    pod = make(obj)
    spec = pod.spec
    assert pod.namespace == "kube-system"
    assert (spec.restart_policy, spec.dns_policy, spec.termination_grace_period_seconds) == ("Never", "Default", 0)
    assert (spec.active_deadline_seconds, spec.priority) == (60, 2000001000)
    assert (spec.host_pid, spec.host_ipc, spec.hostname, spec.subdomain) == (True, True, "h1", "sub")
    assert (spec.run_as_user, spec.run_as_group, spec.fs_group) == (1000, 2000, 3000)
    assert spec.supplemental_groups == (4000, 4001)
    c = spec.containers[0]
    assert (c.image_pull_policy, c.command, c.args, c.working_dir) == ("Never", ("sh", "-c"), ("echo hi",), "/w")
    assert c.env == (EnvVar("A", "1"), EnvVar("B", ""))
    assert c.ports == (ContainerPort(80, "UDP", "http", 8080),)
    assert (c.tty, c.stdin) == (True, True)


def test_requests_default_from_limits() -> None:
    containers = [{"name": "a", "image": "i", "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}}},
                  {"name": "b", "image": "i", "resources": {"limits": {"cpu": "2", "memory": "1Gi"},
                                                           "requests": {"cpu": "1"}}},
                  {"name": "c", "image": "i", "resources": {"requests": {"memory": "64Mi"}}}]
    pod = make(pod_obj(containers=containers, initContainers=[
        {"name": "init", "image": "i", "resources": {"limits": {"cpu": "100m"}}}]))
    a, b, c = pod.spec.containers
    assert a.resources.requests == {"cpu": 500, "memory": 128 * 2**20} == a.resources.limits
    assert b.resources.requests == {"cpu": 1000, "memory": 2**30}
    assert b.resources.limits == {"cpu": 2000, "memory": 2**30}
    assert c.resources.requests == {"memory": 64 * 2**20} and c.resources.limits == {}
    assert pod.spec.init_containers[0].resources.requests == {"cpu": 100}
    assert pod.raw["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "500m", "memory": "128Mi"}


def test_host_network_ports_default_host_port() -> None:
    pod = make(pod_obj(hostNetwork=True, containers=[{"name": "a", "image": "i", "ports": [{"containerPort": 53}]}]))
    assert pod.spec.host_network is True
    assert pod.spec.containers[0].ports == (ContainerPort(53, "TCP", "", 53),)


def test_the_input_is_not_modified() -> None:
    obj = pod_obj()
    before = copy.deepcopy(obj)
    make(obj)
    assert obj == before


# ---- validation


def with_container(**fields: Any) -> dict[str, Any]:
    return pod_obj(containers=[{"name": "app", "image": "busybox", **fields}])


def broken_meta(meta: dict[str, Any]) -> dict[str, Any]:
    obj = pod_obj()
    obj["metadata"] = meta
    return obj


@pytest.mark.parametrize(("obj", "field", "problem"), [
    (broken_meta({}), "metadata.name", "required"),
    (broken_meta({"generateName": "web-"}), "metadata.name", "required"),
    (broken_meta({"name": "Web"}), "metadata.name", "not a DNS subdomain"),
    (broken_meta({"name": "web_1"}), "metadata.name", "not a DNS subdomain"),
    (broken_meta({"name": "a" * 250}), "metadata.name", "not a DNS subdomain"),
    (broken_meta({"name": "web", "namespace": "kube.system"}), "metadata.namespace", "not a DNS label"),
    (broken_meta({"name": "web", "labels": {"a": 1}}), "metadata.labels.a", "must be a string"),
    (broken_meta({"name": "web", "uid": 5}), "metadata.uid", "must be a string"),
    (pod_obj(containers=[]), "spec.containers", "at least one container"),
    (pod_obj(containers=None), "spec.containers", "at least one container"),
    (pod_obj(containers={"name": "a"}), "spec.containers", "must be a list"),
    (pod_obj(containers=[{"image": "i"}]), "spec.containers[0].name", "required"),
    (pod_obj(containers=[{"name": "App", "image": "i"}]), "spec.containers[0].name", "not a DNS label"),
    (pod_obj(containers=[{"name": "a"}]), "spec.containers[0].image", "required"),
    (pod_obj(containers=[{"name": "a", "image": " "}]), "spec.containers[0].image", "required"),
    (pod_obj(containers=[{"name": "a", "image": "i"}, {"name": "a", "image": "i"}]), "spec.containers[1].name",
     "duplicate container name 'a'"),
    (pod_obj(initContainers=[{"name": "app", "image": "i"}]), "spec.containers[0].name", "duplicate"),
    (pod_obj(restartPolicy="Sometimes"), "spec.restartPolicy", "must be one of Always, OnFailure, Never"),
    (pod_obj(dnsPolicy="Google"), "spec.dnsPolicy", "must be one of"),
    (pod_obj(terminationGracePeriodSeconds=-1), "spec.terminationGracePeriodSeconds", "non-negative"),
    (pod_obj(terminationGracePeriodSeconds="30"), "spec.terminationGracePeriodSeconds", "must be an integer"),
    (pod_obj(activeDeadlineSeconds=0), "spec.activeDeadlineSeconds", "at least 1"),
    (pod_obj(hostNetwork="yes"), "spec.hostNetwork", "true or false"),
    (pod_obj(hostname="Host_1"), "spec.hostname", "not a DNS label"),
    (pod_obj(priority=1.5), "spec.priority", "must be an integer"),
    (pod_obj(securityContext={"runAsUser": -1}), "spec.securityContext.runAsUser", "non-negative integer"),
    (pod_obj(securityContext={"supplementalGroups": [1, "x"]}), "spec.securityContext.supplementalGroups[1]",
     "non-negative integer"),
    (with_container(imagePullPolicy="Sometimes"), "spec.containers[0].imagePullPolicy", "must be one of"),
    (with_container(command="sh -c"), "spec.containers[0].command", "must be a list"),
    (with_container(args=["a", 1]), "spec.containers[0].args[1]", "must be a string"),
    (with_container(env=[{"value": "x"}]), "spec.containers[0].env[0].name", "required"),
    (with_container(env=[{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]),
     "spec.containers[0].env[0].valueFrom", "not supported"),
    (with_container(envFrom=[{"configMapRef": {"name": "c"}}]), "spec.containers[0].envFrom", "not supported"),
    (with_container(ports=[{"name": "http"}]), "spec.containers[0].ports[0].containerPort", "required"),
    (with_container(ports=[{"containerPort": 0}]), "spec.containers[0].ports[0].containerPort", "between 1"),
    (with_container(ports=[{"containerPort": 80, "hostPort": 70000}]), "spec.containers[0].ports[0].hostPort",
     "between 0"),
    (with_container(ports=[{"containerPort": 80, "protocol": "ICMP"}]), "spec.containers[0].ports[0].protocol",
     "must be one of TCP, UDP, SCTP"),
    (with_container(ports=[{"containerPort": 80, "name": "a-very-long-port-name"}]),
     "spec.containers[0].ports[0].name", "not a port name"),
    (with_container(resources={"limits": {"cpu": "fast"}}), "spec.containers[0].resources.limits.cpu",
     "is not a quantity"),
    (with_container(resources={"requests": {"memory": "-1Mi"}}), "spec.containers[0].resources.requests.memory",
     "non-negative"),
    (with_container(resources={"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}),
     "spec.containers[0].resources.requests.cpu", "less than or equal to the limit"),
    (pod_obj(hostNetwork=True, containers=[{"name": "a", "image": "i",
                                             "ports": [{"containerPort": 80, "hostPort": 81}]}]),
     "spec.containers[0].ports[0].hostPort", "must equal containerPort"),
])
def test_validation_names_the_field(obj: dict[str, Any], field: str, problem: str) -> None:
    with pytest.raises(ManifestError) as caught:
        make(obj)
    assert caught.value.field == field
    assert problem in caught.value.problem
    assert caught.value.message.startswith(f"{ORIGIN}: {field}: ")


@pytest.mark.parametrize(("obj", "field"), [
    ({"apiVersion": "v2", "kind": "Pod"}, "apiVersion"),
    ({"kind": "Pod"}, "apiVersion"),
    ({"apiVersion": "v1", "kind": "Deployment"}, "kind"),
])
def test_wrong_types_are_refused(obj: dict[str, Any], field: str) -> None:
    with pytest.raises(ManifestError) as caught:
        pods_from_manifest(json.dumps(obj), "file", NODE, origin=ORIGIN)
    assert caught.value.field == field


def test_unknown_source_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown pod source"):
        pod_from_object(pod_obj(), "api", NODE)


# ---- static pods


def test_static_pod_naming_uid_and_annotations() -> None:
    clock = VirtualClock(start_ns=1_767_225_600 * NS_PER_SECOND + 123_450_000)
    pod = pod_from_object(pod_obj(), "file", "Node-A", origin=ORIGIN, clock=clock)
    assert pod.name == "web-node-a" and pod.full_name == "web-node-a_default"
    assert pod.spec.node_name == "Node-A" and pod.raw["spec"]["nodeName"] == "Node-A"
    assert len(pod.uid) == 32 and pod.raw["metadata"]["uid"] == pod.uid
    assert pod.annotations == {CONFIG_HASH: pod.uid, CONFIG_SOURCE: "file", CONFIG_SEEN: "2026-01-01T00:00:00.12345Z"}
    assert pod.raw["metadata"]["annotations"] == pod.annotations
    assert pod.raw["metadata"]["name"] == "web-node-a"
    assert pod.raw["spec"]["tolerations"] == [{"operator": "Exists", "effect": "NoExecute"}]
    assert pod.source == "file"


def test_the_uid_is_md5_of_node_origin_and_content() -> None:
    obj = pod_obj()
    defaulted = copy.deepcopy(make(obj).raw)
    # rebuild what was hashed: the API-defaulted object before the static-pod treatment
    defaulted["metadata"] = {"name": "web", "namespace": "default"}
    for key in ("nodeName", "tolerations"):
        del defaulted["spec"][key]
    del defaulted["status"]
    canonical = json.dumps(defaulted, sort_keys=True, separators=(",", ":"))
    expected = hashlib.md5(f"host:{NODE}file:{ORIGIN}{canonical}".encode(), usedforsecurity=False).hexdigest()
    assert make(obj).uid == expected
    url = "http://127.0.0.1/pods"
    expected_http = hashlib.md5(f"url:{url}{canonical}".encode(), usedforsecurity=False).hexdigest()
    assert pod_from_object(obj, "http", NODE, origin=url).uid == expected_http


def test_uid_is_stable_and_depends_on_content_node_and_origin() -> None:
    obj = pod_obj()
    assert make(obj).uid == make(copy.deepcopy(obj)).uid
    assert make(pod_obj(restartPolicy="Always")).uid == make(obj).uid  # an explicit default is the same pod
    assert make(pod_obj(restartPolicy="Never")).uid != make(obj).uid
    assert pod_from_object(obj, "file", "node-b", origin=ORIGIN).uid != make(obj).uid
    assert pod_from_object(obj, "file", NODE, origin="/other.yaml").uid != make(obj).uid
    assert pod_from_object(obj, "http", NODE, origin=ORIGIN).uid != make(obj).uid


def test_a_given_uid_is_kept_and_is_the_config_hash() -> None:
    obj = pod_obj()
    obj["metadata"]["uid"] = "my-uid"
    pod = make(obj)
    assert pod.uid == "my-uid" and pod.annotations[CONFIG_HASH] == "my-uid"


def test_http_pods_get_no_toleration_and_user_annotations_stay() -> None:
    obj = pod_obj()
    obj["metadata"]["annotations"] = {"team": "x"}
    obj["metadata"]["labels"] = {"app": "web"}
    pod = make(obj, source="http")
    assert "tolerations" not in pod.raw["spec"]
    assert pod.annotations["team"] == "x" and pod.annotations[CONFIG_SOURCE] == "http"
    assert pod.labels == {"app": "web"}
    assert CONFIG_SEEN not in pod.annotations  # no clock given: the receiver stamps it


def test_existing_no_execute_toleration_is_not_doubled() -> None:
    pod = make(pod_obj(tolerations=[{"operator": "Exists", "effect": "NoExecute"}]))
    assert pod.raw["spec"]["tolerations"] == [{"operator": "Exists", "effect": "NoExecute"}]


def test_with_seen_and_rfc3339() -> None:
    pod = with_seen(make(pod_obj()), 1_767_225_600 * NS_PER_SECOND + 1)
    assert pod.annotations[CONFIG_SEEN] == "2026-01-01T00:00:00.000000001Z"
    assert pod.raw["metadata"]["annotations"][CONFIG_SEEN] == "2026-01-01T00:00:00.000000001Z"
    assert rfc3339_nano(0) == "1970-01-01T00:00:00Z"
    assert rfc3339_nano(NS_PER_SECOND // 2) == "1970-01-01T00:00:00.5Z"


# ---- container spec hash


CHANGES: list[tuple[str, Any]] = [
    ("image", "busybox:1.37"), ("command", ["sh"]), ("args", ["-x"]), ("workingDir", "/tmp"),
    ("env", [{"name": "A", "value": "2"}]), ("ports", [{"containerPort": 81}]),
    ("resources", {"limits": {"memory": "64Mi"}}), ("imagePullPolicy", "Always"), ("tty", True),
    ("livenessProbe", {"exec": {"command": ["true"]}}), ("securityContext", {"privileged": True}),
    ("terminationMessagePath", "/tmp/t"), ("volumeMounts", [{"name": "v", "mountPath": "/v"}]),
]


@pytest.mark.parametrize(("key", "value"), CHANGES)
def test_spec_hash_changes_with_any_container_field(key: str, value: Any) -> None:
    base = {"name": "app", "image": "busybox:1.36", "env": [{"name": "A", "value": "1"}]}
    before = make(pod_obj(containers=[base])).spec.containers[0].spec_hash
    after = make(pod_obj(containers=[{**base, key: value}])).spec.containers[0].spec_hash
    assert before != after


def test_spec_hash_stays_when_only_other_things_change() -> None:
    base = pod_obj(containers=[{"name": "app", "image": "busybox:1.36"}, {"name": "side", "image": "pause"}])
    hashes = [c.spec_hash for c in make(base).spec.containers]
    other = copy.deepcopy(base)
    other["metadata"]["labels"] = {"new": "label"}
    other["spec"]["restartPolicy"] = "Never"
    other["spec"]["containers"][1]["image"] = "pause:3.10"
    changed = [c.spec_hash for c in make(other).spec.containers]
    assert changed[0] == hashes[0] and changed[1] != hashes[1]
    # key order and explicit defaults do not matter
    reordered = pod_obj(containers=[{"image": "busybox:1.36", "imagePullPolicy": "IfNotPresent", "name": "app"},
                                    {"name": "side", "image": "pause"}])
    assert [c.spec_hash for c in make(reordered).spec.containers] == hashes
    assert hashes[0] == container_hash(make(base).raw["spec"]["containers"][0])


# ---- manifests and lists


def test_yaml_and_json_manifests() -> None:
    obj = pod_obj()
    from_yaml = pods_from_manifest(yaml.safe_dump(obj), "file", NODE, origin=ORIGIN)
    from_json = pods_from_manifest(json.dumps(obj).encode(), "file", NODE, origin=ORIGIN)
    assert from_yaml == from_json == [make(obj)]


def test_pod_list_and_list() -> None:
    items = [pod_obj(), pod_obj()]
    items[1]["metadata"]["name"] = "db"
    bare = [{k: v for k, v in item.items() if k not in ("apiVersion", "kind")} for item in items]
    pod_list = {"apiVersion": "v1", "kind": "PodList", "items": bare}
    plain_list = {"apiVersion": "v1", "kind": "List", "items": items}
    for manifest in (pod_list, plain_list):
        pods = pods_from_manifest(json.dumps(manifest), "http", NODE, origin="http://x/")
        assert [p.name for p in pods] == ["web-node-a", "db-node-a"]
    assert pods_from_manifest('{"apiVersion": "v1", "kind": "PodList", "items": []}', "http", NODE) == []


def test_a_bad_item_refuses_the_whole_list_naming_it() -> None:
    items = [pod_obj(), pod_obj(restartPolicy="Sometimes")]
    with pytest.raises(ManifestError) as caught:
        pods_from_manifest(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}), "http", NODE,
                           origin="http://x/")
    assert caught.value.field == "items[1].spec.restartPolicy"
    assert caught.value.message.startswith("http://x/: items[1].spec.restartPolicy: must be one of")
    with pytest.raises(ManifestError, match=r"items\[0\]\.kind: must be Pod"):
        pods_from_manifest(json.dumps({"apiVersion": "v1", "kind": "List", "items": [{"kind": "Service"}]}),
                           "http", NODE)


@pytest.mark.parametrize(("data", "problem"), [
    ("", "must be a Pod, a PodList or a List"),
    ("[1, 2]", "must be a Pod, a PodList or a List"),
    ("kind: [", "not valid YAML or JSON"),
    ("a: 1\n---\nb: 2\n", "not valid YAML or JSON"),
    ('{"apiVersion": "v1", "kind": "List", "items": {}}', "items: must be a list"),
])
def test_malformed_manifests(data: str, problem: str) -> None:
    with pytest.raises(ManifestError, match=problem):
        pods_from_manifest(data, "file", NODE, origin=ORIGIN)
