"""``kubeharness bench ...``: the benchmarks' command lines (each prints figures).

Kept apart from ``kubeharness.cli`` so that the CLI module stays small; each benchmark's module is imported
only when its command runs, so building the parser stays cheap.
"""

from __future__ import annotations

import argparse

from kubeharness.memtune import keep_large_buffers


def _bench_cri(args: argparse.Namespace) -> int:
    from kubeharness.bench.cri import main as bench_main

    keep_large_buffers()  # the client side of 8 MiB list answers, so the figures are the runtime's
    return bench_main(args)


def _bench_proxy(args: argparse.Namespace) -> int:
    from kubeharness.bench.proxy import main as proxy_main

    return proxy_main(args)


def _bench_shell(args: argparse.Namespace) -> int:
    from kubeharness.bench.shell import main as shell_main

    return shell_main(args)


def _bench_csi(args: argparse.Namespace) -> int:
    from kubeharness.bench.csi import main as csi_main

    return csi_main(args)


def _bench_cni(args: argparse.Namespace) -> int:
    from kubeharness.bench.cni import main as cni_main

    return cni_main(args)


def _bench_agent(args: argparse.Namespace) -> int:
    from kubeharness.bench.agent import main as agent_bench_main

    return agent_bench_main(args)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    bench = sub.add_parser("bench", help="benchmarks that print figures").add_subparsers(dest="target", required=True)
    bench_cri = bench.add_parser("cri", help="pod-cycle latency and throughput of a CRI endpoint")
    bench_cri.add_argument("--endpoint", help="CRI endpoint to measure (default: start an emulator)")
    bench_cri.add_argument("--cycles", type=int, default=300, help="pod cycles per phase")
    bench_cri.add_argument("--concurrency", type=int, default=16, help="concurrent clients in the parallel phase")
    bench_cri.add_argument("--live-pods", type=int, default=0, help="also measure List* with this many live pods")
    bench_cri.add_argument("--image", default="", help="image for the benchmark's containers")
    bench_cri.add_argument("--stop-timeout", type=int, default=0, help="StopContainer timeout in seconds")
    bench_cri.add_argument("--client-processes", type=int, default=1,
                           help="spread the concurrent clients over this many OS processes")
    bench_cri.add_argument("--warmup", type=int, default=10, help="untimed pod cycles before phase 1")
    bench_cri.add_argument("--list-repeats", type=int, default=50, help="times each List RPC is timed in phase 3")
    bench_cri.add_argument("--rpc-timeout", type=float, default=60.0, help="deadline of each RPC in seconds")
    bench_cri.add_argument("--server-pid", type=int, help="PID of the runtime behind --endpoint, to report its memory")
    bench_cri.add_argument("--keep", action="store_true", help="leave the live pods and the temporary directory")
    bench_cri.add_argument("--json", metavar="FILE", help="also write every figure to FILE as JSON")
    bench_cri.add_argument("--compare-endpoint", metavar="ENDPOINT",
                           help="also run the phases against this runtime and print both with ratios")
    bench_cri.add_argument("--compare-cycles", type=int, default=30,
                           help="pod cycles per phase against --compare-endpoint")
    bench_cri.set_defaults(func=_bench_cri)
    bench_proxy = bench.add_parser("proxy", help="what the CRI proxy adds to each call, against a runtime")
    bench_proxy.add_argument("--upstream", help="the runtime's CRI endpoint (default: start an emulator)")
    bench_proxy.add_argument("--calls", type=int, default=500, help="rounds of five reads per side and round")
    bench_proxy.add_argument("--cycles", type=int, default=50, help="pod cycles per side and round")
    bench_proxy.add_argument("--warmup", type=int, default=5, help="untimed cycles per side and round first")
    bench_proxy.add_argument("--image", default="kubeharness.test/khelper:1", help="the containers' image")
    bench_proxy.set_defaults(func=_bench_proxy)
    bench_shell = bench.add_parser("shell", help="CPU cost of interpreting busybox one-liners in the CRI emulator")
    bench_shell.add_argument("--containers", type=int, default=1000, help="containers running the log loop")
    bench_shell.add_argument("--seconds", type=float, default=60.0, help="virtual seconds to advance the clock")
    bench_shell.set_defaults(func=_bench_shell)
    bench_csi = bench.add_parser("csi", help="stage/publish/unpublish/unstage latency of a CSI plugin")
    bench_csi.add_argument("--endpoint", help="CSI endpoint to measure (default: start an emulated plugin)")
    bench_csi.add_argument("--volumes", type=int, default=16, help="volumes to create (at least --concurrency)")
    bench_csi.add_argument("--cycles", type=int, default=400, help="stage..unstage cycles per phase")
    bench_csi.add_argument("--concurrency", type=int, default=16, help="concurrent clients (and volumes) in phase 2")
    bench_csi.add_argument("--warmup", type=int, default=1, help="untimed cycles per volume before phase 1")
    bench_csi.add_argument("--kubelet-dir", metavar="DIR",
                           help="with --endpoint: where to stage and publish (default /var/lib/kubelet)")
    bench_csi.set_defaults(func=_bench_csi)
    bench_cni = bench.add_parser("cni", help="ADD/DEL latency of kubeharness-cni against the reference host-local")
    bench_cni.add_argument("--count", type=int, default=200, help="ADDs (then DELs) per plugin")
    bench_cni.add_argument("--warmup", type=int, default=5, help="untimed calls per command and plugin first")
    bench_cni.add_argument("--plugin", help="the plugin executable (default: kubeharness-cni beside this Python)")
    bench_cni.add_argument("--reference", default="/usr/lib/cni/host-local", help="the reference IPAM plugin")
    bench_cni.set_defaults(func=_bench_cni)
    bench_agent = bench.add_parser("agent", help="node agent pod startup latency and idle CPU, on a CRI runtime")
    bench_agent.add_argument("--endpoint", help="CRI endpoint for the agent (default: start an emulator)")
    bench_agent.add_argument("--compare-endpoint", metavar="ENDPOINT",
                             help="also run the same phases against this runtime (e.g. containerd) and compare")
    bench_agent.add_argument("--pods", type=int, default=100, help="pods written at once in phase 1")
    bench_agent.add_argument("--idle-pods", type=int, default=110, help="pods in total while idle in phase 2")
    bench_agent.add_argument("--idle-seconds", type=float, default=10.0, help="seconds of idle CPU measured")
    bench_agent.add_argument("--probe-pods", type=int, default=110,
                             help="pods with readiness and liveness probes at periodSeconds 1 in phase 3 (0: none)")
    bench_agent.add_argument("--probe-kill-pods", type=int, default=10,
                             help="of those, pods whose liveness is made to fail, to time the kill")
    bench_agent.add_argument("--probe-seconds", type=float, default=30.0, help="seconds phase 3 is measured")
    bench_agent.add_argument("--resource-pods", type=int, default=110,
                             help="pods logging under rotation, plus one evicted, in phase 4 "
                                  "(0: none; only on the emulator it starts)")
    bench_agent.add_argument("--resource-seconds", type=float, default=60.0, help="seconds phase 4 is measured")
    bench_agent.add_argument("--log-rate", type=float, default=200.0, help="lines per second of each pod in phase 4")
    bench_agent.add_argument("--log-line-bytes", type=int, default=256,
                             help="phase 4's lines padded to this many bytes (0: unpadded, about 20)")
    bench_agent.add_argument("--log-max-size", default="1Mi", help=argparse.SUPPRESS)  # containerLogMaxSize
    bench_agent.add_argument("--log-monitor-interval", default="10s", help=argparse.SUPPRESS)
    bench_agent.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each phase")
    bench_agent.add_argument("--compare-timeout", type=float, default=600.0,
                             help="seconds to wait for each phase against --compare-endpoint")
    bench_agent.set_defaults(func=_bench_agent)
