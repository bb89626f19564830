"""The agent's KubeletConfiguration loading, and the quantity and duration formats it uses."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest

from kubeharness.agent.config.kubelet import AgentConfig, ConfigError, EvictionThreshold
from kubeharness.agent.pod.quantity import (
    format_quantity,
    parse_duration_ns,
    parse_duration_s,
    parse_resource,
    to_millicores,
    to_units,
)
from kubeharness.errors import InvalidArgument

HEAD = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"


def load(tmp_path: Path, body: str, name: str = "kubelet.yaml") -> AgentConfig:
    path = tmp_path / name
    path.write_text(HEAD + body)
    return AgentConfig.load(path, node_name="node-a")


# ---- quantities and durations


@pytest.mark.parametrize(("text", "millicores"), [
    ("100m", 100), ("1", 1000), ("1.5", 1500), (2, 2000), (0.25, 250), ("1e3", 1_000_000), ("0.0001", 1),
    ("250000u", 250), ("1k", 1_000_000), (".5", 500), ("+3", 3000),
])
def test_cpu_quantities_in_millicores(text: object, millicores: int) -> None:
    assert to_millicores(text, "cpu") == millicores


@pytest.mark.parametrize(("text", "units"), [
    ("128Mi", 128 * 2**20), ("1G", 10**9), ("1Gi", 2**30), ("1e3", 1000), ("1E3", 1000), ("1E", 10**18),
    ("1Ki", 1024), ("1k", 1000), ("1.5Gi", 3 * 2**29), ("100m", 1), ("500", 500), (1024, 1024), ("2Ti", 2 * 2**40),
    ("1Pi", 2**50), ("1Ei", 2**60), ("1M", 10**6), ("1T", 10**12), ("1P", 10**15), ("1e-3", 1), ("12n", 1),
])
def test_other_quantities_in_units(text: object, units: int) -> None:
    assert to_units(text, "memory") == units


@pytest.mark.parametrize("text", ["", "abc", "1Qi", "1.2.3", "Mi", "1 Mi", "--1", "1e", "1ee3"])
def test_bad_quantity_names_the_field(text: str) -> None:
    with pytest.raises(InvalidArgument, match=r"^limits\.memory: "):
        to_units(text, "limits.memory")


def test_quantity_rejects_other_types_and_negative_resources() -> None:
    with pytest.raises(InvalidArgument, match="must be a string or a number"):
        to_units(True, "x")
    with pytest.raises(InvalidArgument, match="x: must be non-negative"):
        parse_resource("memory", "-1Mi", "x")
    assert parse_resource("cpu", "250m", "x") == 250


def test_format_quantity() -> None:
    assert format_quantity(1500, "cpu") == "1500m"
    assert format_quantity(2000, "cpu") == "2"
    assert format_quantity(128 * 2**20, "memory") == "128Mi"
    assert format_quantity(1000, "memory") == "1000"


@pytest.mark.parametrize(("text", "ns"), [
    ("10s", 10**10), ("1m30s", 90 * 10**9), ("500ms", 5 * 10**8), ("0", 0), ("1.5h", 5400 * 10**9),
    ("2h45m", (2 * 3600 + 45 * 60) * 10**9), ("300us", 300_000), ("300µs", 300_000), ("7ns", 7), ("-2s", -2 * 10**9),
    ("0s", 0), (".5s", 5 * 10**8),
])
def test_go_durations(text: str, ns: int) -> None:
    assert parse_duration_ns(text, "f") == ns


@pytest.mark.parametrize("text", ["", "10", "s", "1d", "1m30", "10 s", "1.5.s", "-"])
def test_bad_duration_names_the_field(text: str) -> None:
    with pytest.raises(InvalidArgument, match=r"^syncFrequency: .* is not a duration"):
        parse_duration_ns(text, "syncFrequency")
    with pytest.raises(InvalidArgument, match="must be a string"):
        parse_duration_s(10, "syncFrequency")


# ---- defaults


def test_defaults_are_kubelets(tmp_path: Path) -> None:
    config = load(tmp_path, "")
    assert config.node_name == "node-a"
    assert config.root_dir == "/var/lib/kubelet"
    assert config.container_runtime_endpoint == "unix:///run/containerd/containerd.sock"
    assert config.image_service_endpoint == config.container_runtime_endpoint
    assert config.static_pod_path == "" and config.static_pod_url == ""
    assert config.file_check_frequency_s == 20 and config.http_check_frequency_s == 20
    assert config.sync_frequency_s == 60
    assert (config.cgroup_driver, config.cgroups_per_qos, config.cgroup_root) == ("cgroupfs", True, "/")
    assert (config.max_pods, config.pod_pids_limit) == (110, -1)
    assert config.system_reserved == {} and config.kube_reserved == {}
    assert config.eviction_hard == {
        "memory.available": EvictionThreshold("memory.available", quantity=100 * 2**20),
        "nodefs.available": EvictionThreshold("nodefs.available", percent=10),
        "imagefs.available": EvictionThreshold("imagefs.available", percent=15),
        "nodefs.inodesFree": EvictionThreshold("nodefs.inodesFree", percent=5),
    }
    assert config.read_only_port == 0  # off, as in kubelet
    assert (config.healthz_port, config.healthz_bind_address, config.address) == (10248, "127.0.0.1", "0.0.0.0")
    assert config.pod_logs_dir == "/var/log/pods"
    assert config.serialize_image_pulls is True and config.max_parallel_image_pulls is None
    assert config.cluster_dns == () and config.cluster_domain == "" and config.pod_cidr == ""
    assert (config.crash_loop_initial_s, config.crash_loop_max_s, config.crash_loop_reset_s) == (10, 300, 600)
    assert config.warnings == () and config.ignored == ()
    assert config.source_path == str(tmp_path / "kubelet.yaml")


def test_constructed_directly_has_the_same_defaults(tmp_path: Path) -> None:
    assert AgentConfig(node_name="node-a") == load(tmp_path, "")
    assert AgentConfig().node_name  # the hostname


def test_zero_values_mean_the_default(tmp_path: Path) -> None:
    config = load(tmp_path, "fileCheckFrequency: 0s\nsyncFrequency: '0'\nmaxPods: 0\npodPidsLimit: -5\n")
    assert (config.file_check_frequency_s, config.sync_frequency_s) == (20, 60)
    assert (config.max_pods, config.pod_pids_limit) == (110, -1)


# ---- every field


FULL = """
containerRuntimeEndpoint: unix:///run/kubeharness/cri.sock
imageServiceEndpoint: unix:///run/kubeharness/images.sock
runtimeRequestTimeout: 30s
staticPodPath: /etc/kubernetes/manifests
fileCheckFrequency: 5s
staticPodURL: http://127.0.0.1:8080/pods
staticPodURLHeader: {X-Token: [a, b]}
httpCheckFrequency: 1m30s
syncFrequency: 500ms
cgroupDriver: systemd
cgroupsPerQOS: false
cgroupRoot: /kubepods
maxPods: 20
podPidsLimit: 1024
systemReserved: {cpu: 100m, memory: 256Mi, ephemeral-storage: 1Gi, pid: "1000"}
kubeReserved: {cpu: "1.5", memory: 1G}
evictionHard: {memory.available: 200Mi, nodefs.inodesFree: "0%", pid.available: "10%"}
evictionPressureTransitionPeriod: 30s
address: 127.0.0.1
readOnlyPort: 10255
healthzPort: 0
healthzBindAddress: 127.0.0.2
podLogsDir: /tmp/pods
containerLogMaxSize: 5Mi
containerLogMaxFiles: 3
containerLogMaxWorkers: 2
containerLogMonitorInterval: 3s
serializeImagePulls: false
maxParallelImagePulls: 4
imageMinimumGCAge: 1m
imageGCHighThresholdPercent: 90
imageGCLowThresholdPercent: 70
clusterDNS: [10.96.0.10, "fd00::a"]
clusterDomain: cluster.local
podCIDR: 10.244.1.0/24
nodeStatusUpdateFrequency: 4s
featureGates: {KubeletCrashLoopBackOffMax: true}
crashLoopBackOff: {maxContainerRestartPeriod: 100s}
"""


def test_every_field_is_parsed(tmp_path: Path) -> None:
    config = load(tmp_path, FULL)
    assert config.container_runtime_endpoint == "unix:///run/kubeharness/cri.sock"
    assert config.image_service_endpoint == "unix:///run/kubeharness/images.sock"
    assert config.runtime_request_timeout_s == 30
    assert config.static_pod_path == "/etc/kubernetes/manifests"
    assert config.file_check_frequency_s == 5
    assert config.static_pod_url == "http://127.0.0.1:8080/pods"
    assert config.static_pod_url_header == {"X-Token": ("a", "b")}
    assert config.http_check_frequency_s == 90
    assert config.sync_frequency_s == 0.5
    assert (config.cgroup_driver, config.cgroups_per_qos, config.cgroup_root) == ("systemd", False, "/kubepods")
    assert (config.max_pods, config.pod_pids_limit) == (20, 1024)
    assert config.system_reserved == {"cpu": 100, "memory": 256 * 2**20, "ephemeral-storage": 2**30, "pid": 1000}
    assert config.kube_reserved == {"cpu": 1500, "memory": 10**9}
    assert config.eviction_hard == {  # replaces the defaults; 0% switches a signal off
        "memory.available": EvictionThreshold("memory.available", quantity=200 * 2**20),
        "pid.available": EvictionThreshold("pid.available", percent=10),
    }
    assert config.eviction_pressure_transition_period_s == 30
    assert (config.address, config.read_only_port) == ("127.0.0.1", 10255)
    assert (config.healthz_port, config.healthz_bind_address) == (0, "127.0.0.2")
    assert config.pod_logs_dir == "/tmp/pods"
    assert config.container_log_max_size_bytes == 5 * 2**20
    assert (config.container_log_max_files, config.container_log_monitor_interval_s) == (3, 3)
    assert config.container_log_max_workers == 2
    assert (config.serialize_image_pulls, config.max_parallel_image_pulls) == (False, 4)
    assert config.image_minimum_gc_age_s == 60
    assert (config.image_gc_high_threshold_percent, config.image_gc_low_threshold_percent) == (90, 70)
    assert config.cluster_dns == ("10.96.0.10", "fd00::a")
    assert (config.cluster_domain, config.pod_cidr) == ("cluster.local", "10.244.1.0/24")
    assert config.node_status_update_frequency_s == 4
    assert config.feature_gates == {"KubeletCrashLoopBackOffMax": True}
    assert (config.crash_loop_initial_s, config.crash_loop_max_s) == (10, 100)
    assert config.warnings == ()


def test_json_is_read_too(tmp_path: Path) -> None:
    doc = {"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration", "maxPods": 7,
           "syncFrequency": "10s"}
    path = tmp_path / "kubelet.json"
    path.write_text(json.dumps(doc))
    config = AgentConfig.load(path)
    assert (config.max_pods, config.sync_frequency_s) == (7, 10)


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "k.yaml"
    path.write_text(HEAD + "maxPods: 7\n")
    config = AgentConfig.load(path, max_pods=3, root_dir="/tmp/root", crash_loop_reset_s=60.0)
    assert (config.max_pods, config.root_dir, config.crash_loop_reset_s) == (3, "/tmp/root", 60)
    assert replace(config, crash_loop_initial_s=0.5).crash_loop_initial_s == 0.5


def test_merge_default_eviction_settings(tmp_path: Path) -> None:
    config = load(tmp_path, "mergeDefaultEvictionSettings: true\nevictionHard: {memory.available: 1Gi}\n")
    assert config.eviction_hard["memory.available"].quantity == 2**30
    assert config.eviction_hard["nodefs.available"].percent == 10
    assert len(config.eviction_hard) == 4


def test_crash_loop_backoff(tmp_path: Path) -> None:
    reduced = load(tmp_path, "featureGates: {ReduceDefaultCrashLoopBackOffDecay: true}\n")
    assert (reduced.crash_loop_initial_s, reduced.crash_loop_max_s) == (1, 60)
    capped = load(tmp_path, "crashLoopBackOff: {maxContainerRestartPeriod: 2s}\n")
    assert (capped.crash_loop_initial_s, capped.crash_loop_max_s) == (2, 2)  # the cap is also the start
    with pytest.raises(ConfigError, match=r"crashLoopBackOff\.maxContainerRestartPeriod: must be between 1s and 300s"):
        load(tmp_path, "crashLoopBackOff: {maxContainerRestartPeriod: 10m}\n")


def test_serialized_pulls_follow_max_parallel(tmp_path: Path) -> None:
    assert load(tmp_path, "maxParallelImagePulls: 3\n").serialize_image_pulls is False
    assert load(tmp_path, "maxParallelImagePulls: 1\n").serialize_image_pulls is True
    with pytest.raises(ConfigError, match="maxParallelImagePulls"):
        load(tmp_path, "serializeImagePulls: true\nmaxParallelImagePulls: 3\n")


# ---- unknown fields and bad values


def test_unknown_fields_warn_and_kubelet_fields_are_ignored(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="kubeharness.agent.config.kubelet"):
        config = load(tmp_path, "maxPods: 5\nmaxPodz: 6\ncrashLoopBackOff: {initialPeriod: 1s}\n"
                                "authentication: {anonymous: {enabled: true}}\nport: 10250\n")
    assert config.warnings == ("unknown field 'maxPodz'", "unknown field 'crashLoopBackOff.initialPeriod'")
    assert "unknown field 'maxPodz'" in caplog.text
    assert set(config.ignored) == {"authentication", "port"}
    assert config.max_pods == 5


@pytest.mark.parametrize(("body", "field"), [
    ("maxPods: many", "maxPods: must be an integer"),
    ("maxPods: -1", "maxPods: must not be negative"),
    ("maxPods: true", "maxPods: must be an integer"),
    ("cgroupDriver: upstart", "cgroupDriver: must be one of cgroupfs, systemd"),
    ("cgroupsPerQOS: 'yes'", "cgroupsPerQOS: must be true or false"),
    ("syncFrequency: 10", "syncFrequency: duration must be a string"),
    ("syncFrequency: 10x", "syncFrequency: '10x' is not a duration"),
    ("fileCheckFrequency: -1s", "fileCheckFrequency: must not be negative"),
    ("readOnlyPort: 70000", "readOnlyPort: must be between 0 and 65535"),
    ("healthzPort: -1", "healthzPort: must be between 0 and 65535"),
    ("address: localhost", "address: 'localhost' is not an IP address"),
    ("clusterDNS: 10.96.0.10", "clusterDNS: must be a list"),
    ("clusterDNS: [10.96.0.10, dns]", r"clusterDNS\[1\]: 'dns' is not an IP address"),
    ("podCIDR: 10.244.0.0/33", "podCIDR: .* is not a CIDR"),
    ("systemReserved: {cpu: lots}", r"systemReserved\.cpu: 'lots' is not a quantity"),
    ("kubeReserved: {gpu: '1'}", r"kubeReserved\.gpu: unsupported resource"),
    ("kubeReserved: [cpu]", "kubeReserved: must be a map"),
    ("evictionHard: {memory.available: 1Zi}", r"evictionHard\.memory\.available: .* unknown suffix"),
    ("evictionHard: {memory.available: '110%'}", r"evictionHard\.memory\.available: percentage must be"),
    ("evictionHard: {memory.free: 1Gi}", r"evictionHard\.memory\.free: unsupported eviction signal"),
    ("featureGates: {Foo: 'on'}", r"featureGates\.Foo: must be true or false"),
    ("staticPodPath: 3", "staticPodPath: must be a string"),
    ("staticPodURLHeader: {X: a}", r"staticPodURLHeader\.X: must be a list of strings"),
    ("imageGCLowThresholdPercent: 90", "imageGCLowThresholdPercent: must be less than"),
    ("containerLogMaxFiles: 1", "containerLogMaxFiles: must be greater than 1, got 1"),
    ("containerLogMaxWorkers: 0", "containerLogMaxWorkers: must be greater than or equal to 1, got 0"),
    ("containerLogMonitorInterval: 2999ms", "containerLogMonitorInterval: must be a positive time duration greater"),
    ("containerLogMonitorInterval: 0s", "containerLogMonitorInterval: must be a positive time duration greater"),
    ("containerLogMaxSize: '1.5'", "containerLogMaxSize: invalid max log size"),
    ("containerLogMaxSize: 10Zi", "containerLogMaxSize: .* unknown suffix"),
    ("crashLoopBackOff: 5s", "crashLoopBackOff: must be a map"),
])
def test_invalid_values_name_the_field(tmp_path: Path, body: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field) as caught:
        load(tmp_path, body + "\n")
    assert str(tmp_path / "kubelet.yaml") in caught.value.message
    assert isinstance(caught.value, InvalidArgument)


@pytest.mark.parametrize(("text", "problem"), [
    ("apiVersion: kubelet.config.k8s.io/v1\nkind: KubeletConfiguration\n", "apiVersion: must be"),
    ("kind: KubeletConfiguration\n", "apiVersion: must be"),
    ("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeProxyConfiguration\n", "kind: must be"),
    ("- a\n- b\n", "must be a KubeletConfiguration object"),
    ("", "must be a KubeletConfiguration object"),
    ("a: [b\n", "not valid YAML or JSON"),
])
def test_wrong_documents_are_refused(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "k.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=problem):
        AgentConfig.load(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration"):
        AgentConfig.load(tmp_path / "nope.yaml")


def test_container_log_fields_default_and_a_negative_size_turns_rotation_off(tmp_path: Path) -> None:
    config = load(tmp_path, "")
    assert (config.container_log_max_size_bytes, config.container_log_max_files) == (10 * 2**20, 5)
    assert (config.container_log_max_workers, config.container_log_monitor_interval_s) == (1, 10)
    config = load(tmp_path, "containerLogMaxSize: '-1'\ncontainerLogMaxFiles: 2\n")
    assert (config.container_log_max_size_bytes, config.container_log_max_files) == (-1, 2)
    assert "containerLogMaxWorkers" not in config.ignored
