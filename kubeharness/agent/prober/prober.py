"""Runs one probe of a container with its handler and turns the outcome into a result, as kubelet's
``prober/prober.go``: it picks the handler, resolves host and port, retries a probe that could not run
(up to 3 times), records the events (``Unhealthy`` "<Kind> probe failed: <output>", ``ProbeWarning``
"<Kind> probe warning: <output>", ``Unhealthy`` "<Kind> probe errored and resulted in unknown state: ...")
and the metrics. A probe that errored every time gives no result (the worker throws it away); a probe of
unknown outcome counts as a failure.
"""

from __future__ import annotations

import time

from kubeharness.agent.events import PROBE_WARNING, UNHEALTHY, WARNING, Recorder, container_field_path
from kubeharness.agent.pod.expansion import expand_command
from kubeharness.agent.pod.model import Container, ExecAction, GRPCAction, HTTPGetAction, Pod, Probe, TCPSocketAction
from kubeharness.agent.prober import metrics as probe_metrics
from kubeharness.agent.prober.handlers import exec_command, grpc_health, http_get, probe_host, resolve_port, tcp_socket
from kubeharness.agent.prober.metrics import ProbeMetrics
from kubeharness.agent.prober.outcome import Outcome, ProbeError, ProbeResult
from kubeharness.agent.prober.results import Result
from kubeharness.agent.prober.worker import LIVENESS, READINESS, STARTUP
from kubeharness.agent.runtime.client import RuntimeClient
from kubeharness.clock import Clock

MAX_PROBE_RETRIES = 3
HOST_NETWORK_ADDRESS = "127.0.0.1"  # a pod without an IP of its own (host network) is probed on the node


def probe_of(container: Container, kind: str) -> Probe | None:
    return {LIVENESS: container.liveness_probe, READINESS: container.readiness_probe,
            STARTUP: container.startup_probe}[kind]


class Prober:
    """Runs probes for one agent."""

    def __init__(self, clock: Clock, client: RuntimeClient, recorder: Recorder, metrics: ProbeMetrics) -> None:
        self.clock = clock
        self.client = client
        self.recorder = recorder
        self.metrics = metrics
        self.in_flight = 0  # probes running now (tests on a virtual clock let them finish before moving time)

    async def probe(self, kind: str, pod: Pod, container: Container, container_id: str, pod_ip: str,
                    ) -> Result | None:
        spec = probe_of(container, kind)
        if spec is None:
            return Result.SUCCESS
        init = container in pod.spec.init_containers
        field_path = container_field_path(container.name, init)
        started = time.perf_counter()
        error: ProbeError | None = None
        outcome: Outcome | None = None
        self.in_flight += 1
        try:
            for _ in range(MAX_PROBE_RETRIES):
                try:
                    outcome = await self._run(spec, container, container_id, pod_ip)
                    break
                except ProbeError as err:
                    error = err
        finally:
            self.in_flight -= 1
        elapsed = time.perf_counter() - started
        if outcome is None:
            self.recorder.record(pod.namespace, pod.name, pod.uid, field_path, WARNING, UNHEALTHY,
                                 f"{kind} probe errored and resulted in unknown state: {error}")
            return None
        if outcome.result is ProbeResult.WARNING:
            self.recorder.record(pod.namespace, pod.name, pod.uid, field_path, WARNING, PROBE_WARNING,
                                 f"{kind} probe warning: {outcome.output}")
        elif outcome.result is ProbeResult.FAILURE:
            self.recorder.record(pod.namespace, pod.name, pod.uid, field_path, WARNING, UNHEALTHY,
                                 f"{kind} probe failed: {outcome.output}")
        result = Result.SUCCESS if outcome.succeeded else Result.FAILURE
        label = probe_metrics.SUCCESSFUL if result is Result.SUCCESS else probe_metrics.FAILED
        self.metrics.observe(kind, label, container.name, pod.name, pod.namespace, pod.uid, elapsed)
        return result

    async def _run(self, spec: Probe, container: Container, container_id: str, pod_ip: str) -> Outcome:
        action = spec.handler
        timeout = float(spec.timeout_seconds)
        address = pod_ip or HOST_NETWORK_ADDRESS
        if isinstance(action, ExecAction):
            return await exec_command(self.clock, self.client, container_id=container_id,
                                      command=expand_command(action.command, container.env), timeout_s=timeout)
        if isinstance(action, HTTPGetAction):
            return await http_get(self.clock, scheme=action.scheme, host=probe_host(action.host, address),
                                  port=resolve_port(action.port, container), path=action.path,
                                  headers=action.headers, timeout_s=timeout)
        if isinstance(action, TCPSocketAction):
            return await tcp_socket(self.clock, host=probe_host(action.host, address),
                                    port=resolve_port(action.port, container), timeout_s=timeout)
        if isinstance(action, GRPCAction):
            return await grpc_health(self.clock, host=address, port=action.port, service=action.service,
                                     timeout_s=timeout)
        raise ProbeError(f"unknown probe handler {type(action).__name__}")
