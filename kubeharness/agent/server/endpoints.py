"""What the agent answers on its read-only port: ``/pods``, ``/healthz``, ``/metrics``, ``/metrics/probes``,
``/stats/summary``, ``/metrics/resource`` (kubelet's), ``/events`` (kubeharness's own: the events kubelet would
send to an API server) and ``/api/v1/nodes/<node-name>`` (ours: the Node object, while there is no API server)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from kubeharness.agent.events import Recorder
from kubeharness.agent.nodestatus.node import NodeStatus
from kubeharness.agent.pleg.pleg import Pleg
from kubeharness.agent.pod.model import Pod
from kubeharness.agent.prober.metrics import ProbeMetrics
from kubeharness.agent.server.httpserver import Answer, Route
from kubeharness.agent.server.metrics import Registry
from kubeharness.agent.stats.summary import resource_metrics, summary_json
from kubeharness.agent.stats.types import StatsProvider, Summary

PROMETHEUS_TEXT = CONTENT_TYPE_PLAIN_0_0_4  # what generate_latest writes, and kubelet's
log = logging.getLogger(__name__)
PLEG_UNHEALTHY = (b"[-]pleg failed: PLEG is not healthy: the runtime has not answered a relist within 3m0s\n"
                  b"healthz check failed\n")


def pod_list(desired: Mapping[str, Pod], rejected: Mapping[str, tuple[Pod, str, str]],
             statuses: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """A v1 PodList: the admitted pods with their status, then the rejected ones as Failed with the reason."""
    items = []
    for uid, pod in sorted(desired.items(), key=lambda item: item[1].full_name):
        items.append({**pod.raw, "status": statuses.get(uid, {"phase": "Pending"})})
    for pod, reason, message in rejected.values():
        items.append({**pod.raw, "status": {"phase": "Failed", "reason": reason, "message": message}})
    return {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}


def routes(pods: Callable[[], dict[str, Any]], pleg: Pleg, metrics: Registry, probe_metrics: ProbeMetrics,
           recorder: Recorder) -> dict[str, Callable[[], Answer]]:
    def pods_answer() -> Answer:
        return Answer(200, json.dumps(pods()).encode(), "application/json")

    def healthz_answer() -> Answer:
        if pleg.last_relist_ns is not None and not pleg.healthy():
            return Answer(500, PLEG_UNHEALTHY)
        return Answer(200, b"ok")

    return {
        "/pods": pods_answer,
        "/healthz": healthz_answer,
        "/metrics": lambda: Answer(200, generate_latest(metrics.registry), PROMETHEUS_TEXT),
        "/metrics/probes": lambda: Answer(200, generate_latest(probe_metrics.registry), PROMETHEUS_TEXT),
        "/events": lambda: Answer(200, json.dumps(recorder.event_list()).encode(), "application/json"),
    }


def stats_routes(stats: StatsProvider, node: NodeStatus) -> dict[str, Route]:
    """``/stats/summary``, ``/metrics/resource`` and the Node object. A runtime that does not answer makes the
    summary a 500 naming the failed call, and the resource metrics ``scrape_error 1``, as kubelet's."""

    async def summary() -> Summary | str:
        try:
            return await stats.summary()
        except grpc.aio.AioRpcError as err:
            log.warning("stats summary: runtime call failed: %s: %s", err.code().name, err.details())
            return f"failed to get the node's stats: the runtime answered {err.code().name}: {err.details()}\n"

    async def summary_answer() -> Answer:
        found = await summary()
        if isinstance(found, str):
            return Answer(500, found.encode())
        return Answer(200, json.dumps(summary_json(found), indent=2).encode(), "application/json")

    async def resource_answer() -> Answer:
        found = await summary()
        return Answer(200, resource_metrics(found if isinstance(found, Summary) else None), PROMETHEUS_TEXT)

    async def node_answer() -> Answer:
        try:
            return Answer(200, json.dumps(await node.node()).encode(), "application/json")
        except grpc.aio.AioRpcError as err:
            return Answer(500, f"failed to get the runtime's version: {err.code().name}: {err.details()}\n".encode())

    return {"/stats/summary": summary_answer, "/metrics/resource": resource_answer,
            f"/api/v1/nodes/{node.config.node_name}": node_answer}
