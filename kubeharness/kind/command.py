"""``kubeharness kind bridge``: the CRI bridge to a kind node, as a command.

    kubeharness kind bridge [--cluster NAME | --node CONTAINER] --listen PATH [--socket PATH] [--docker-host URL]

It prints the endpoint (``unix://PATH``) once it serves, then carries every connection to the node's
containerd socket until SIGINT or SIGTERM. The Docker SDK is imported only when the command runs, so
building the CLI's parser stays cheap.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from kubeharness.kind.layout import CONTAINERD_SOCKET


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    kind = sub.add_parser("kind", help="a kind cluster's node through its Docker engine")
    actions = kind.add_subparsers(dest="action", required=True)
    bridge = actions.add_parser("bridge", help="carry a unix socket here to the node's containerd over docker exec")
    bridge.add_argument("--cluster", default="kind", help="the kind cluster (default: kind): its NAME-control-plane")
    bridge.add_argument("--node", help="the node's container, if not the cluster's control plane")
    bridge.add_argument("--listen", required=True, help="the unix socket (path or unix:// URL) to serve")
    bridge.add_argument("--socket", default=CONTAINERD_SOCKET,
                        help=f"the socket in the node (default {CONTAINERD_SOCKET})")
    bridge.add_argument("--docker-host", help="the Docker engine (default: $DOCKER_HOST or its usual socket)")
    bridge.set_defaults(func=run_bridge)


def run_bridge(args: argparse.Namespace) -> int:
    from kubeharness.kind.bridge import serve
    from kubeharness.kind.transport import DockerError, DockerNode

    try:
        node = DockerNode(args.node or f"{args.cluster}-control-plane", args.docker_host)
    except DockerError as err:
        print(f"kubeharness kind bridge: {err}", file=sys.stderr)
        return 1

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await serve(node, Path(str(args.listen).removeprefix("unix://")), args.socket)

    try:
        asyncio.run(main())
    finally:
        node.close()
    return 0
