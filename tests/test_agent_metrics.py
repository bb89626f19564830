"""The agent's ``/metrics`` and ``/metrics/probes`` as kubelet writes them: prometheus_client in a registry per
agent, no ``_created`` series, kubelet's histogram buckets, names and types; read through the agent's HTTP port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kubeharness.agent.server.metrics import Registry
from tests.promtext import matching, value
from tests.test_agent_e2e import Node, helper, http_get, phase, pod, start_node, stop_node

# kubelet's bounds, written out here (not imported) so that a change to the agent's shows
DEF_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
RUNTIME_OPERATION_BUCKETS = [0.005, 0.0125, 0.03125, 0.078125, 0.1953125, 0.48828125, 1.220703125, 3.0517578125,
                             7.62939453125, 19.073486328125, 47.6837158203125, 119.20928955078125, 298.0232238769531,
                             745.0580596923828]  # ExponentialBuckets(.005, 2.5, 14)
POD_START_BUCKETS = [0.5, 1, 2, 3, 4, 5, 6, 8, 10, 20, 30, 45, 60, 120, 180, 240, 300, 360, 480, 600, 900, 1200,
                     1800, 2700, 3600]
TYPES = {
    "kubelet_running_pods": "gauge", "kubelet_running_containers": "gauge",
    "kubelet_pod_start_duration_seconds": "histogram", "kubelet_pleg_relist_duration_seconds": "histogram",
    "kubelet_runtime_operations_total": "counter", "kubelet_runtime_operations_errors_total": "counter",
    "kubelet_runtime_operations_duration_seconds": "histogram", "kubelet_started_pods_total": "counter",
    "kubelet_started_containers_total": "counter", "kubelet_restarted_pods_total": "counter",
}


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    n = await start_node(tmp_path)
    try:
        yield n
    finally:
        await stop_node(n)


def types(text: str) -> dict[str, str]:
    """``# TYPE`` lines: the names exactly as written (counters with ``_total``)."""
    return {line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE ")}


def bounds(text: str, name: str, **labels: str) -> list[float]:
    return [float(s.labels["le"]) for s in matching(text, f"{name}_bucket", **labels)]


async def scrape(node: Node, path: str) -> str:
    status, body = await http_get(node.port, path)
    assert status == 200
    return body.decode()


async def test_metrics_have_kubelets_names_types_and_buckets_and_no_created_series(node: Node) -> None:
    app = helper("app")
    app["readinessProbe"] = {"exec": {"command": ["khelper", "check", "healthy"]}, "periodSeconds": 1}
    node.write("web", pod("web", app))
    await node.until(lambda p: phase(p, "web") == "Running", limit_s=60)
    text = await scrape(node, "/metrics")
    assert types(text) == TYPES
    assert not [line for line in text.splitlines() if "_created" in line]
    assert bounds(text, "kubelet_pod_start_duration_seconds") == [*POD_START_BUCKETS, float("inf")]
    assert bounds(text, "kubelet_pleg_relist_duration_seconds") == [*DEF_BUCKETS, float("inf")]
    found = bounds(text, "kubelet_runtime_operations_duration_seconds", operation_type="run_podsandbox")
    assert found == pytest.approx([*RUNTIME_OPERATION_BUCKETS, float("inf")], rel=1e-12)
    assert value(text, "kubelet_runtime_operations_duration_seconds_count", operation_type="run_podsandbox") == 1
    assert value(text, "kubelet_started_pods_total") == 1
    assert value(text, "kubelet_started_containers_total", container_type="container") == 1
    # every family parses as the Prometheus text format
    assert {f.name for f in text_string_to_metric_families(text)} >= {"kubelet_running_pods"}

    async def probed() -> str:
        for _ in range(120):  # virtual seconds; the probe runs every second
            probes = await scrape(node, "/metrics/probes")
            if matching(probes, "prober_probe_duration_seconds_count", probe_type="Readiness"):
                return probes
            await node.advance(1)
        raise AssertionError("no readiness probe observed in 120 s")

    probes = await probed()
    assert types(probes) == {"prober_probe_total": "counter", "prober_probe_duration_seconds": "histogram"}
    assert not [line for line in probes.splitlines() if "_created" in line]
    assert bounds(probes, "prober_probe_duration_seconds", probe_type="Readiness") == [*DEF_BUCKETS, float("inf")]
    assert not [line for line in text.splitlines() if line.startswith("prober_")]  # served apart, as kubelet's


def test_each_agent_has_its_own_registry() -> None:
    one, two = Registry(), Registry()  # prometheus_client's default registry would refuse the second
    one.operations.labels("version").inc()
    assert value(generate_latest(one.registry), "kubelet_runtime_operations_total", operation_type="version") == 1
    assert value(generate_latest(two.registry), "kubelet_runtime_operations_total", operation_type="version") is None
