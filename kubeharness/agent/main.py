"""``kubeharness agent``: run the node agent as a daemon until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging

from kubeharness.agent.agent import Agent
from kubeharness.agent.config.kubelet import AgentConfig
from kubeharness.clock import RealClock
from kubeharness.grpcserve import wait_for_stop_signal

log = logging.getLogger(__name__)


async def run(config: AgentConfig) -> None:
    agent = Agent(config, RealClock())
    await agent.start()
    ports = ", ".join(f"{s.host}:{s.port}" for s in agent.servers) or "no HTTP server"
    print(f"kubeharness agent for node {config.node_name} on {config.container_runtime_endpoint} ({ports})",
          flush=True)
    await wait_for_stop_signal()
    await agent.stop()


def main(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in (("node_name", args.node_name), ("root_dir", args.root_dir)) if v}
    config = AgentConfig.load(args.config, **overrides)
    for warning in config.warnings:
        log.warning("%s", warning)
    asyncio.run(run(config))
    return 0
