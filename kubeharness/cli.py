"""The ``kubeharness`` command: one entry point, a subcommand per component.

    kubeharness cri serve --socket PATH --state-dir DIR [--config FILE] [--restart-on-crash [--max-restarts N]]
                          [--cni-conf-dir DIR] [--cni-bin-dir DIR] [--netns emulated|real]
    kubeharness cri proxy --listen unix://A --upstream unix://B [--faults FILE] [--restart-on-crash]
    kubeharness csi serve --endpoint unix://PATH --state-dir DIR [--registration-dir DIR] [--node-id ID]
    kubeharness agent --config FILE [--node-name NAME] [--root-dir DIR]
    kubeharness bench cri [--endpoint unix://PATH] [--cycles N] [--concurrency K] [--live-pods N] [--json FILE]
    kubeharness bench proxy [--upstream unix://PATH] [--cycles N]
    kubeharness bench shell [--containers N] [--seconds S]
    kubeharness bench cni [--count N] [--warmup N]
    kubeharness bench csi [--endpoint unix://PATH] [--volumes N] [--cycles N] [--concurrency K]
    kubeharness cni serve --socket PATH [--drain-seconds S] [--preload-faults]
    kubeharness cni install --bin-dir DIR [--socket PATH] [--fallback FILE]
    kubeharness env up|down|status [--run-dir DIR] [--registry-port N] [--cni bridge|kubeharness]
    kubeharness faults list|load PLAN|replace PLAN|clear|fired --control SOCKET
    kubeharness kind bridge [--cluster NAME | --node CONTAINER] --listen PATH [--socket PATH]
    kubeharness demo [--faults PLAN]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from kubeharness.agent.flags import add_arguments as agent_arguments
from kubeharness.bench.command import add_parser as add_bench_parser
from kubeharness.errors import KubeharnessError
from kubeharness.kind.command import add_parser as add_kind_parser
from kubeharness.memtune import keep_large_buffers


def _supervised(args: argparse.Namespace, name: str) -> int | None:
    """With --restart-on-crash: run this same command as a child and restart it when it crashes (its exit
    status); without: None, and the caller serves itself."""
    if args.max_restarts is not None and (args.max_restarts < 0 or not args.restart_on_crash):
        raise KubeharnessError("--max-restarts takes a count of 0 or more, with --restart-on-crash")
    if not args.restart_on_crash:
        return None
    from kubeharness.supervise import run_supervised, supervised_argv

    child = supervised_argv(args.argv, drop={"--restart-on-crash": 0, "--max-restarts": 1})
    return run_supervised([sys.executable, "-m", "kubeharness.cli", *child], max_restarts=args.max_restarts,
                          name=name)


def _fault_paths(args: argparse.Namespace) -> tuple[Path | None, Path | None, Path | None]:
    """The plan, fired-fault log and control socket named by the fault options, or None each."""
    def path(value: str | None) -> Path | None:
        return Path(value) if value else None

    return path(args.faults), path(args.fault_log), path(args.fault_control)


def _cri_serve(args: argparse.Namespace) -> int:
    if (status := _supervised(args, "CRI emulator")) is not None:
        return status
    from kubeharness.emulators.cri.config import CriConfig
    from kubeharness.emulators.cri.server import serve

    config = CriConfig.load(Path(args.config)) if args.config else CriConfig()
    for key in ("cni_conf_dir", "cni_bin_dir", "netns"):  # flags win over the config file
        if getattr(args, key) is not None:
            setattr(config, key, getattr(args, key))
    keep_large_buffers()
    faults, fault_log, control = _fault_paths(args)
    asyncio.run(serve(args.socket, Path(args.state_dir), config, faults, args.fault_seed, fault_log, control))
    return 0


def _cri_proxy(args: argparse.Namespace) -> int:
    if (status := _supervised(args, "CRI proxy")) is not None:
        return status
    from kubeharness.proxy.server import serve as proxy_serve

    faults, fault_log, control = _fault_paths(args)
    asyncio.run(proxy_serve(args.listen, args.upstream, faults, args.fault_seed, fault_log, control))
    return 0


def _csi_serve(args: argparse.Namespace) -> int:
    if (status := _supervised(args, "CSI emulator")) is not None:
        return status
    from kubeharness.emulators.csi.config import CsiConfig
    from kubeharness.emulators.csi.server import serve as csi_serve

    config = CsiConfig.load(Path(args.config)) if args.config else CsiConfig()
    for key in ("node_id", "mode", "driver_name"):  # flags win over the config file
        if getattr(args, key) is not None:
            setattr(config, key, getattr(args, key))
    config.check()
    registration = Path(args.registration_dir) if args.registration_dir else None
    faults, fault_log, control = _fault_paths(args)
    asyncio.run(csi_serve(args.endpoint, Path(args.state_dir), config, registration, faults, args.fault_seed,
                          fault_log, control))
    return 0


def _agent(args: argparse.Namespace) -> int:
    from kubeharness.agent.main import main as agent_main

    return agent_main(args)


def _cni(args: argparse.Namespace) -> int:
    if args.action == "serve":  # in a fresh interpreter without gRPC and asyncio: its forks are cheaper
        import os

        argv = [sys.executable, "-m", "kubeharness.emulators.cni.forkserver", "--socket", args.socket,
                "--drain-seconds", str(args.drain_seconds)]
        os.execv(sys.executable, argv + ["--preload-faults"] * args.preload_faults + ["--verbose"] * args.verbose)
    from kubeharness.emulators.cni.shim import ShimError, install

    try:
        print(install(Path(args.bin_dir), args.socket, Path(args.fallback) if args.fallback else None))
    except ShimError as err:
        raise KubeharnessError(str(err)) from None
    return 0


def _env(args: argparse.Namespace) -> int:
    from kubeharness.env import manage

    run_dir = Path(args.run_dir)
    if args.action == "up":
        state = manage.up(run_dir, args.registry_port, args.cni)
        print(state.socket)
    elif args.action == "down":
        for what in manage.down(run_dir):
            print(f"cleaned up by force: {what}")
    else:
        for key, value in manage.status(run_dir).items():
            print(f"{key:<11} {value}")
    return 0


def _faults(args: argparse.Namespace) -> int:
    import json

    from kubeharness.faults.control import FaultControl

    control = FaultControl(Path(args.control))
    try:
        fields = {}
        if args.action in ("load", "replace"):
            fields = {"plan": Path(args.plan).read_text(), "source": args.plan}
        answer = asyncio.run(control.call(args.action, **fields))
    except OSError as err:
        raise KubeharnessError(f"{err.filename or args.control}: {err.strerror or err}") from None
    answer.pop("ok", None)
    for key, value in answer.items():
        for item in value:
            print(json.dumps(item, sort_keys=True))
        if not value:
            print(f"({key}: none)")
    return 0


def _demo(args: argparse.Namespace) -> int:
    if args.faults:
        from kubeharness.demo_faults import main as faults_demo_main

        return faults_demo_main(args)
    from kubeharness.demo import main as demo_main

    return demo_main(args)


def _fault_options(parser: argparse.ArgumentParser, plan_help: str, control_default: str, what: str) -> None:
    """The fault and crash options every daemon that applies fault plans takes."""
    parser.add_argument("--faults", metavar="FILE", help=plan_help)
    parser.add_argument("--fault-seed", type=int, default=0, help="seed of the plan's probabilities")
    parser.add_argument("--fault-log", metavar="FILE", help="append every fired fault to FILE as JSON lines")
    parser.add_argument("--fault-control", metavar="PATH",
                        help=f"the fault control socket (default: {control_default}, owner-only)")
    parser.add_argument("--restart-on-crash", action="store_true",
                        help=f"run the {what} as a child process and restart it whenever it crashes")
    parser.add_argument("--max-restarts", type=int, metavar="N", help="with --restart-on-crash: give up after N")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubeharness", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="component", required=True)

    cri = sub.add_parser("cri", help="the CRI runtime emulator").add_subparsers(dest="action", required=True)
    serve = cri.add_parser("serve", help="serve the CRI on a unix socket")
    serve.add_argument("--socket", required=True, help="unix socket path (or unix:// URL) to listen on")
    serve.add_argument("--state-dir", required=True, help="directory for the emulator's saved state")
    serve.add_argument("--config", help="YAML configuration file")
    serve.add_argument("--cni-conf-dir", metavar="DIR", help="set pod networks up with the CNI config found in DIR")
    serve.add_argument("--cni-bin-dir", metavar="DIR", help="where the CNI plugin executables are")
    serve.add_argument("--netns", choices=("emulated", "real"),
                       help="sandbox network namespaces: placeholders, or real ones (root only)")
    _fault_options(serve, "a fault plan (YAML) to apply to every call", "STATE_DIR/faults.sock", "emulator")
    serve.set_defaults(func=_cri_serve)

    proxy = cri.add_parser("proxy", help="forward CRI to a real runtime, applying fault plans on the way")
    proxy.add_argument("--listen", required=True, help="unix socket (path or unix:// URL) to serve CRI on")
    proxy.add_argument("--upstream", required=True, help="the runtime's CRI endpoint, e.g. unix:///run/containerd.sock")
    _fault_options(proxy, "a fault plan (YAML); rules for 'proxy' and 'cri' apply", "the listen path + '.faults'",
                   "proxy")
    proxy.set_defaults(func=_cri_proxy)

    csi_cmd = sub.add_parser("csi", help="the CSI plugin emulator").add_subparsers(dest="action", required=True)
    csi_serve = csi_cmd.add_parser("serve", help="serve CSI Identity, Controller and Node on a unix socket")
    csi_serve.add_argument("--endpoint", required=True, help="unix socket (path or unix:// URL) to listen on")
    csi_serve.add_argument("--state-dir", required=True, help="directory for the plugin's saved state")
    csi_serve.add_argument("--config", help="YAML configuration file (keys of CsiConfig)")
    csi_serve.add_argument("--registration-dir", metavar="DIR",
                           help="serve kubelet plugin registration in DIR (e.g. /var/lib/kubelet/plugins_registry)")
    csi_serve.add_argument("--node-id", help="this node's id (NodeGetInfo, ControllerPublishVolume)")
    csi_serve.add_argument("--driver-name", help="the driver's name (default csi.kubeharness.io)")
    csi_serve.add_argument("--mode", choices=("emulated", "real"), help="emulated mounts, or real ones (root)")
    _fault_options(csi_serve, "a fault plan (YAML); rules for 'csi' apply", "STATE_DIR/faults.sock", "plugin")
    csi_serve.set_defaults(func=_csi_serve)

    from kubeharness.emulators.cni.shim import DEFAULT_SOCKET as CNI_SOCKET

    cni = sub.add_parser("cni", help="the CNI plugin's fast path").add_subparsers(dest="action", required=True)
    cni_serve = cni.add_parser("serve", help="the fork server behind the installed kubeharness-cni shim")
    cni_serve.add_argument("--socket", default=CNI_SOCKET, help=f"unix socket to listen on (default: {CNI_SOCKET})")
    cni_serve.add_argument("--drain-seconds", type=float, default=5.0,
                           help="on SIGTERM, how long invocations in flight may still run")
    cni_serve.add_argument("--preload-faults", action="store_true",
                           help="import the fault engine up front (faster with fault plans, slower forks)")
    cni_serve.set_defaults(func=_cni)
    cni_install = cni.add_parser("install", help="build the C shim and install it as DIR/kubeharness-cni")
    cni_install.add_argument("--bin-dir", required=True, help="the CNI bin directory")
    cni_install.add_argument("--socket", default=CNI_SOCKET, help="the fork server's socket, baked into the shim")
    cni_install.add_argument("--fallback", metavar="FILE",
                             help="what the shim execs without a server (default: kubeharness-cni beside this Python)")
    cni_install.set_defaults(func=_cni)

    agent = sub.add_parser("agent", help="the kubelet-like node agent (takes kubelet's flags)")
    agent_arguments(agent)
    agent.set_defaults(func=_agent)

    add_bench_parser(sub)

    faults = sub.add_parser("faults", help="change an emulator's fault rules at run time, read what fired")
    fault_actions = faults.add_subparsers(dest="action", required=True)
    for action, text in (("list", "the rules in force"), ("load", "add the rules of a plan file"),
                         ("replace", "put a plan file in force instead"), ("clear", "no rules"),
                         ("fired", "the fired-fault log")):
        one = fault_actions.add_parser(action, help=text)
        one.add_argument("--control", required=True, help="the emulator's fault control socket")
        if action in ("load", "replace"):
            one.add_argument("plan", help="a fault plan (YAML)")
        one.set_defaults(func=_faults)

    from kubeharness.env.layout import DEFAULT_REGISTRY_PORT, DEFAULT_RUN_DIR

    env = sub.add_parser("env", help="real containerd and an image registry beside the emulators")
    env_actions = env.add_subparsers(dest="action", required=True)
    for action, text in (("up", "start (idempotent) and print the CRI socket"), ("down", "stop and clean up"),
                         ("status", "what is running")):
        one = env_actions.add_parser(action, help=text)
        one.add_argument("--run-dir", default=str(DEFAULT_RUN_DIR), help="where every file of it lives")
        if action == "up":
            one.add_argument("--registry-port", type=int, default=DEFAULT_REGISTRY_PORT,
                             help="port of the image registry on 127.0.0.1")
            one.add_argument("--cni", choices=("bridge", "kubeharness"), default="bridge",
                             help="pod networks from the Debian bridge plugin or from kubeharness-cni (real mode)")
        one.set_defaults(func=_env)

    add_kind_parser(sub)
    demo = sub.add_parser("demo", help="start the emulators, run a few pods through their lifecycle, print it")
    demo.add_argument("--faults", metavar="PLAN",
                      help="instead: two pods on an emulator with this fault plan (one opted in), and what fired")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for commands that re-run themselves supervised
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except KubeharnessError as err:
        print(f"kubeharness: {err.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
