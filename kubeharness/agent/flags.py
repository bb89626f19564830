"""The command line of ``kubeharness agent``: kubelet's own flags, for what the agent supports.

Kept apart from ``agent.main`` (which imports the whole agent) so that building the CLI's parser stays
cheap; ``agent.main`` says what each flag does.
"""

from __future__ import annotations

import argparse

DEBUG_FROM_V = 4  # klog levels: 4 is kubelet's "debug" verbosity


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The agent's command line: kubelet's flags for what the agent supports."""
    parser.add_argument("--config", required=True, help="a KubeletConfiguration file (kubelet.config.k8s.io/v1beta1)")
    parser.add_argument("--hostname-override", "--node-name", dest="node_name",
                        help="this node's name (default: the hostname)")
    parser.add_argument("--root-dir", help="the agent's directory (default /var/lib/kubelet)")
    parser.add_argument("--kubeconfig", help="the API server's kubeconfig (checked; the agent runs standalone)")
    parser.add_argument("-v", "--v", dest="klog_v", type=int, default=0, metavar="N",
                        help="log verbosity as kubelet's: 4 or more logs at debug level")
