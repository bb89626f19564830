"""``kubeharness agent``: run the node agent as a daemon until SIGINT or SIGTERM, with kubelet's own flags.

The agent takes the flags a person gives a standalone kubelet, for what it supports (``agent/flags.py``),
so that it stands in for a kubelet binary wherever one is started by its command line (the node suite's
``kubelet`` target):

- ``--config FILE``: the KubeletConfiguration (required: the agent has no flag for each of its fields).
- ``--root-dir DIR`` (default ``/var/lib/kubelet``), ``--hostname-override NAME`` (the node's name,
  trimmed and lower-cased as kubelet does; ``--node-name`` is our older spelling of it).
- ``--kubeconfig FILE``: the API server's kubeconfig. It is read and checked (a kubeconfig whose current
  context names a cluster with a server), but the agent has no API-server mode yet, so it runs as a
  kubelet does while its API server is unreachable: static pods only, and it says so in a warning.
- ``-v N`` / ``--v=N``: klog's verbosity; 0-3 log at INFO, 4 and more at DEBUG.

Both ``--flag value`` and ``--flag=value`` work. A kubelet flag the agent does not support is an error
naming it (argparse's "unrecognized arguments"), never silently ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

import yaml

from kubeharness.agent.agent import Agent
from kubeharness.agent.config.kubelet import AgentConfig, ConfigError
from kubeharness.agent.flags import DEBUG_FROM_V
from kubeharness.clock import RealClock
from kubeharness.grpcserve import wait_for_stop_signal

log = logging.getLogger(__name__)


def check_kubeconfig(path: str) -> str:
    """The API server named by the kubeconfig's current context; ConfigError naming what is wrong."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"--kubeconfig {path}: cannot read it: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--kubeconfig {path}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or doc.get("kind", "Config") != "Config":
        raise ConfigError(f"--kubeconfig {path}: not a kubeconfig (kind: Config)")

    def named(section: str, name: object) -> dict[str, object]:
        for entry in doc.get(section) or []:
            if isinstance(entry, dict) and entry.get("name") == name and isinstance(entry.get(section[:-1]), dict):
                found: dict[str, object] = entry[section[:-1]]
                return found
        raise ConfigError(f"--kubeconfig {path}: {section}: no entry named {name!r}")

    current = doc.get("current-context")
    if not current:
        raise ConfigError(f"--kubeconfig {path}: no current-context")
    cluster = named("clusters", named("contexts", current).get("cluster"))
    server = cluster.get("server")
    if not isinstance(server, str) or not server:
        raise ConfigError(f"--kubeconfig {path}: the cluster of context {current!r} has no server")
    return server


async def run(config: AgentConfig) -> None:
    agent = Agent(config, RealClock())
    await agent.start()
    ports = ", ".join(f"{s.host}:{s.port}" for s in agent.servers) or "no HTTP server"
    print(f"kubeharness agent for node {config.node_name} on {config.container_runtime_endpoint} ({ports})",
          flush=True)
    await wait_for_stop_signal()
    await agent.stop()


def main(args: argparse.Namespace) -> int:
    if args.klog_v >= DEBUG_FROM_V:
        logging.getLogger().setLevel(logging.DEBUG)
        logging.getLogger("grpc").setLevel(logging.INFO)  # grpc's own polling lines are not the agent's
    overrides = {}
    if args.node_name:
        overrides["node_name"] = args.node_name.strip().lower()
    if args.root_dir:
        overrides["root_dir"] = args.root_dir
    config = AgentConfig.load(args.config, **overrides)
    for warning in config.warnings:
        log.warning("%s", warning)
    if args.kubeconfig:
        server = check_kubeconfig(args.kubeconfig)
        log.warning("--kubeconfig: the agent has no API-server mode yet; running standalone (static pods only), "
                    "as a kubelet does while %s is unreachable", server)
    asyncio.run(run(config))
    return 0
