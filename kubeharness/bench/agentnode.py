"""The node agent under benchmark: a ``kubeharness agent`` subprocess, its manifests and its read-only port.

:class:`SpawnedAgent` writes a KubeletConfiguration into its own directory (static pods from
``<root>/manifests``, logs under ``<root>/pods``, ``readOnlyPort`` on a free loopback port), starts
``python -m kubeharness.cli agent`` exactly as a user would, and stops it with SIGTERM by PID (SIGKILL if it
does not exit in time), as :class:`~kubeharness.bench.emulator.SpawnedEmulator` does for the emulator.
Manifests are written under temporary names beside the static pod directory and renamed into it, so the
agent never reads half a file. ``/pods`` and ``/metrics`` are read over plain HTTP/1.1.

The pure helpers (manifest, RFC 3339 parsing, "is this pod Running", histogram parsing) are tested directly.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubeharness.bench.emulator import SpawnedEmulator
from kubeharness.bench.errors import BenchError

NODE_NAME = "bench"
IMAGE = "kubeharness.test/khelper:1"
CONFIG_SEEN = "kubernetes.io/config.seen"
HTTP_TIMEOUT_S = 10.0
GRACE_PERIOD_S = 1  # the pods' terminationGracePeriodSeconds, so that clean-up is quick
DEFAULT_MAX_PODS = 110  # kubelet's


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pod_manifest(name: str, namespace: str) -> dict[str, Any]:
    """A static pod with one khelper container that runs until stopped."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": {"containers": [{"name": "app", "image": IMAGE, "command": ["/khelper"],
                                     "imagePullPolicy": "IfNotPresent"}],
                     "restartPolicy": "Always", "terminationGracePeriodSeconds": GRACE_PERIOD_S}}


def parse_rfc3339_ns(text: str) -> int:
    """``2024-05-01T10:00:00.123456789Z`` (Go's RFC3339Nano in UTC) -> nanoseconds since the epoch."""
    if not text.endswith("Z"):
        raise ValueError(f"not an RFC 3339 UTC time: {text!r}")
    base, _, fraction = text[:-1].partition(".")
    seconds = int(datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp())
    return seconds * 1_000_000_000 + int((fraction or "0").ljust(9, "0")[:9])


def seen_ns(item: dict[str, Any]) -> int | None:
    """When the agent first saw this pod (its ``kubernetes.io/config.seen``), or None without it."""
    stamp = item.get("metadata", {}).get("annotations", {}).get(CONFIG_SEEN)
    return parse_rfc3339_ns(stamp) if isinstance(stamp, str) else None


def is_running(item: dict[str, Any]) -> bool:
    """Phase Running and every container of the spec reported running."""
    status = item.get("status", {})
    containers = item.get("spec", {}).get("containers", [])
    statuses = status.get("containerStatuses", [])
    return (status.get("phase") == "Running" and len(statuses) == len(containers) > 0
            and all("running" in s.get("state", {}) for s in statuses))


@dataclass(frozen=True)
class Histogram:
    """One Prometheus histogram series: observations, their sum, and cumulative bucket counts by bound."""

    count: int
    sum: float
    buckets: dict[float, int]

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else 0.0


def parse_histogram(text: str, name: str) -> Histogram:
    """The unlabelled series ``name`` of a Prometheus text exposition (all zero if absent)."""
    count, total, buckets = 0, 0.0, {}
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == f"{name}_count":
            count = int(float(value))
        elif key == f"{name}_sum":
            total = float(value)
        elif key.startswith(f'{name}_bucket{{le="') and key.endswith('"}'):
            buckets[float(key[len(name) + 12:-2])] = int(float(value))
    return Histogram(count, total, buckets)


def by_label(text: str, series: str) -> dict[str, float]:
    """The values of ``series`` (a name with a single label, such as ``operation_type``) by label value."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key.startswith(series + "{") and key.endswith('"}'):
            found[key.split('"')[1]] = float(value)
    return found


def runtime_calls_in_flight(text: str) -> int:
    """CRI calls the agent has begun and not finished, from its /metrics: it counts an operation when it begins
    (``kubelet_runtime_operations_total``) and observes its duration when it ends (the histogram's count).
    The container event stream is counted without a duration, so it is left out."""
    begun = by_label(text, "kubelet_runtime_operations_total")
    ended = by_label(text, "kubelet_runtime_operations_duration_seconds_count")
    return int(sum(n - ended.get(op, 0) for op, n in begun.items() if op != "get_container_events"))


async def http_get(port: int, path: str, timeout_s: float = HTTP_TIMEOUT_S) -> tuple[int, bytes]:
    """GET ``http://127.0.0.1:port/path`` with ``Connection: close``: the status and the body."""
    async def fetch() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            return await reader.read()
        finally:
            writer.close()

    data = await asyncio.wait_for(fetch(), timeout_s)
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        return int(head.split(b" ")[1]), body
    except (IndexError, ValueError):
        raise ConnectionError(f"not an HTTP answer: {head[:80]!r}") from None


class SpawnedAgent(SpawnedEmulator):
    """``kubeharness agent`` in a subprocess against ``endpoint``, everything it writes under ``root``."""

    what = "the agent"

    def __init__(self, root: Path, endpoint: str, max_pods: int = DEFAULT_MAX_PODS,
                 extra_config: dict[str, Any] | None = None) -> None:
        super().__init__(root)
        self.extra_config = dict(extra_config or {})  # more KubeletConfiguration fields, over the ones below
        self.runtime_endpoint = endpoint
        self.max_pods = max(max_pods, DEFAULT_MAX_PODS)
        self.config_path = root / "kubelet.json"
        self.manifests = root / "manifests"
        self.staging = root / "staging"  # same file system as manifests, so a rename is atomic
        self.log_path = root / "agent.log"
        self.port = free_port()

    def command(self) -> list[str]:
        return [sys.executable, "-m", "kubeharness.cli", "agent", "--config", str(self.config_path),
                "--node-name", NODE_NAME, "--root-dir", str(self.root / "kubelet")]

    def start(self) -> None:
        self.manifests.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "containerRuntimeEndpoint": self.runtime_endpoint, "staticPodPath": str(self.manifests),
            "fileCheckFrequency": "20s", "readOnlyPort": self.port, "address": "127.0.0.1", "healthzPort": 0,
            "podLogsDir": str(self.root / "pods"), "maxPods": self.max_pods,
            "clusterDNS": ["10.96.0.10"], "clusterDomain": "cluster.local", **self.extra_config}))
        super().start()

    async def wait_ready(self, timeout_s: float) -> None:
        """Poll ``/pods`` until it answers 200; a clear BenchError if the agent exits or stays silent."""
        assert self.process is not None, "the agent was not started"
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"{self.what} exited with code {self.process.returncode} before it answered; "
                                 f"the end of its log {self.log_path}:\n{self.log_tail()}")
            try:
                if (await http_get(self.port, "/pods", 1.0))[0] == 200:
                    return
            except (OSError, TimeoutError):
                pass
            await asyncio.sleep(0.05)
        raise BenchError(f"{self.what} did not answer on 127.0.0.1:{self.port} within {timeout_s:g} s; "
                         f"the end of its log {self.log_path}:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def write_manifests(self, names: list[str], namespace: str) -> None:
        """Write every manifest under a temporary name first, then rename them all into the static pod path."""
        for name in names:
            (self.staging / f"{name}.json").write_text(json.dumps(pod_manifest(name, namespace)))
        for name in names:
            os.replace(self.staging / f"{name}.json", self.manifests / f"{name}.json")

    def delete_manifests(self) -> int:
        removed = 0
        for file in self.manifests.iterdir():
            file.unlink(missing_ok=True)
            removed += 1
        return removed

    async def pods(self) -> dict[str, dict[str, Any]]:
        """``/pods`` by pod name (static pods are named ``<name>-<node>``)."""
        status, body = await http_get(self.port, "/pods")
        if status != 200:
            raise ConnectionError(f"/pods answered {status}")
        return {item["metadata"]["name"]: item for item in json.loads(body)["items"]}

    async def metrics(self) -> str:
        status, body = await http_get(self.port, "/metrics")
        if status != 200:
            raise ConnectionError(f"/metrics answered {status}")
        return body.decode()


def static_name(name: str) -> str:
    """The name ``/pods`` gives the static pod of manifest ``name``."""
    return f"{name}-{NODE_NAME}"
