"""Which stats provider the agent runs: the emulated node's when ``kubeharnessNodeCapacity`` is configured
(our extension), else the host's. Both answer :meth:`summary` (the Summary API) and :meth:`machine_capacity`
(the Node object's capacity)."""

from __future__ import annotations

from typing import Protocol

from kubeharness.agent.config.kubelet import AgentConfig
from kubeharness.agent.runtime.client import RuntimeClient
from kubeharness.agent.stats.emulated import EmulatedStats
from kubeharness.agent.stats.host import HostStats
from kubeharness.agent.stats.types import StatsProvider
from kubeharness.clock import Clock


class NodeStatsProvider(StatsProvider, Protocol):
    def machine_capacity(self) -> dict[str, int]:
        """Resource -> amount (CPU in millicores, the rest in bytes)."""
        ...


def provider_for(config: AgentConfig, client: RuntimeClient, clock: Clock) -> NodeStatsProvider:
    if config.node_capacity is not None:
        return EmulatedStats(config.node_name, config.node_capacity, client, clock, config.pod_logs_dir)
    return HostStats(config.node_name, config.root_dir, client, clock, config.pod_logs_dir)
