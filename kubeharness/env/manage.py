"""``kubeharness env up | down | status``: bring the real runtime up, idempotently, and take it all away.

``up`` checks what it needs (root, the Debian packages, a free registry port), starts the registry,
builds and pushes the images, writes containerd's configuration (pod networks from the Debian bridge
plugin, or with ``cni="kubeharness"`` from kubeharness-cni in real mode) and starts it, then waits until the
CRI answers; every wait is bounded and a failure says why (with the tail of the daemon's log). Running
``up`` again finds the daemons from ``env.json`` alive and answering and only prints the socket.

``down`` removes every pod through the CRI, stops containerd, ends the shims that served its pods (found
by the containerd address in their command line), unmounts what is still mounted below the run
directory, deletes leftover network namespaces of its pods and the bridge, and stops the registry.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc

from kubeharness.env import config
from kubeharness.env.images import build_and_push
from kubeharness.env.layout import EnvPaths, EnvState
from kubeharness.env.tools import EnvError, missing_tools, run
from kubeharness.wire.cri import api_pb2 as api
from kubeharness.wire.cri import api_pb2_grpc as api_grpc

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
NETNS_DIR = Path("/var/run/netns")


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        return not Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[-1].startswith("Z")
    except OSError:
        return False


def alive(pid: int, name: str) -> bool:
    """Whether ``pid`` is a running process whose command line mentions ``name`` (not a reused PID)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return running(pid) and name.encode() in cmdline


def _log_tail(path: Path, lines: int = 8) -> str:
    try:
        return " / ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _spawn(argv: list[str], log_path: Path) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True
        )
    return process.pid


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _registry_answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def cri_version(sock: Path, timeout_s: float = 2.0) -> str | None:
    """containerd's CRI version string, or None if the socket does not answer."""
    if not sock.exists():
        return None
    with grpc.insecure_channel(f"unix://{sock}") as channel:
        try:
            reply = api_grpc.RuntimeServiceStub(channel).Version(api.VersionRequest(), timeout=timeout_s)
        except grpc.RpcError:
            return None
    return f"{reply.runtime_name} {reply.runtime_version}"


def _wait(check: object, what: str, pid: int, name: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        if not running(pid):  # (just after the fork the command line is not yet the daemon's)
            raise EnvError(f"{what} exited while starting: {_log_tail(log_path)}")
        time.sleep(0.1)
    raise EnvError(f"{what} did not answer within {START_TIMEOUT_S:g} s: {_log_tail(log_path)}")


CNI_CHOICES = ("bridge", "kubeharness")
REFERENCE_PLUGINS = Path("/usr/lib/cni")


def kubeharness_cni_executable() -> Path:
    """The installed ``kubeharness-cni`` console script (beside this Python, or on PATH)."""
    beside = Path(sys.executable).with_name("kubeharness-cni")
    found = beside if beside.exists() else shutil.which("kubeharness-cni")
    if found is None:
        raise EnvError("kubeharness-cni is not installed (pip install -e . installs the console script)")
    return Path(found)


def _link_cni_plugins(paths: EnvPaths) -> None:
    """One plugin directory for containerd: links to the Debian plugins and to kubeharness-cni."""
    paths.cni_bin_dir.mkdir(parents=True, exist_ok=True)
    targets = {plugin.name: plugin for plugin in REFERENCE_PLUGINS.iterdir()}
    targets["kubeharness-cni"] = kubeharness_cni_executable()
    for name, target in targets.items():
        link = paths.cni_bin_dir / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)


def up(run_dir: Path, registry_port: int, cni: str = "bridge") -> EnvState:
    if os.geteuid() != 0:
        raise EnvError("containerd, runc and the CNI bridge need root: run `kubeharness env up` as root")
    missing = missing_tools()
    if missing:
        raise EnvError(f"missing Debian packages: {', '.join(missing)} (ci/setup-env installs them)")
    paths = EnvPaths(run_dir)
    state = EnvState.load(paths)
    if (
        alive(state.containerd_pid, "containerd")
        and alive(state.registry_pid, "docker-registry")
        and cri_version(paths.socket) is not None
        and _registry_answers(state.registry_port)
    ):
        return state  # already up
    paths.root.mkdir(parents=True, exist_ok=True)

    if not (alive(state.registry_pid, "docker-registry") and _registry_answers(state.registry_port)):
        if not _port_free(registry_port):
            raise EnvError(f"port {registry_port} on 127.0.0.1 is taken: choose another with --registry-port")
        paths.registry_dir.mkdir(parents=True, exist_ok=True)
        paths.registry_config.write_text(config.registry_yaml(paths, registry_port))
        state.registry_pid = _spawn(["docker-registry", "serve", str(paths.registry_config)], paths.registry_log)
        state.registry_port = registry_port
        state.save(paths)
        _wait(lambda: _registry_answers(registry_port), "the registry", state.registry_pid, "docker-registry",
              paths.registry_log)
    registry = f"127.0.0.1:{state.registry_port}"
    state.images = build_and_push(paths.build_dir, registry)
    state.save(paths)

    if not alive(state.containerd_pid, "containerd"):
        paths.containerd_dir.mkdir(parents=True, exist_ok=True)
        paths.cni_conf_dir.mkdir(parents=True, exist_ok=True)
        if cni not in CNI_CHOICES:
            raise EnvError(f"unknown CNI {cni!r}: choose {' or '.join(CNI_CHOICES)}")
        bin_dir = REFERENCE_PLUGINS
        conflist = config.cni_conflist(paths)
        if cni == "kubeharness":
            _link_cni_plugins(paths)
            bin_dir, conflist = paths.cni_bin_dir, config.kubeharness_conflist(paths)
        (paths.cni_conf_dir / "10-kubeharness.conflist").write_text(conflist)
        paths.containerd_config.write_text(config.containerd_toml(paths, registry, str(bin_dir)))
        state.cni = cni
        if paths.socket.exists():
            paths.socket.unlink()
        state.containerd_pid = _spawn(["containerd", "--config", str(paths.containerd_config)], paths.containerd_log)
        state.save(paths)
    _wait(lambda: cri_version(paths.socket) is not None, "containerd", state.containerd_pid, "containerd",
          paths.containerd_log)
    state.socket = f"unix://{paths.socket}"
    state.save(paths)
    return state


def netns_of(verbose_info: str) -> str:
    """The network namespace path in containerd's verbose PodSandboxStatus info (its OCI runtime spec)."""
    try:
        spec = json.loads(verbose_info).get("runtimeSpec", {})
        namespaces = spec.get("linux", {}).get("namespaces", [])
    except (ValueError, AttributeError):
        return ""
    return next((str(ns.get("path", "")) for ns in namespaces if ns.get("type") == "network"), "")


def _remove_pods(sock: Path) -> list[str]:
    """Stop and remove every pod; the network namespaces they had, for checking afterwards."""
    namespaces: list[str] = []
    with grpc.insecure_channel(f"unix://{sock}") as channel:
        stub = api_grpc.RuntimeServiceStub(channel)
        try:
            pods = stub.ListPodSandbox(api.ListPodSandboxRequest(), timeout=10).items
        except grpc.RpcError:
            return namespaces
        for pod in pods:
            try:
                status = stub.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=pod.id, verbose=True),
                                               timeout=10)
                path = netns_of(status.info.get("info", ""))
                if path:
                    namespaces.append(path)
                stub.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)
                stub.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)
            except grpc.RpcError:
                continue
    return namespaces


def _stop(pid: int, name: str) -> None:
    if not alive(pid, name):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while alive(pid, name) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(pid, name):
        os.kill(pid, signal.SIGKILL)


def shims_of(sock: Path) -> list[int]:
    """PIDs of containerd shims serving the containerd at ``sock`` (their command line names its address)."""
    pids = []
    needle = str(sock).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"containerd-shim" in cmdline and needle in cmdline:
            pids.append(int(entry.name))
    return pids


def mounts_below(root: Path) -> list[str]:
    """Mount points at or below ``root``, deepest first."""
    prefix = str(root.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def bridge_exists(paths: EnvPaths) -> bool:
    return Path(f"/sys/class/net/{paths.bridge}").exists()


def down(run_dir: Path) -> list[str]:
    """Take the environment away; returns what had to be cleaned by force (for the report)."""
    paths = EnvPaths(run_dir)
    state = EnvState.load(paths)
    forced: list[str] = []
    namespaces: list[str] = []
    if alive(state.containerd_pid, "containerd"):
        namespaces = _remove_pods(paths.socket)
        _stop(state.containerd_pid, "containerd")
    for pid in shims_of(paths.socket):
        forced.append(f"shim {pid}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for point in mounts_below(paths.root):
        forced.append(f"mount {point}")
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    for path in namespaces:
        if Path(path).exists():
            forced.append(f"netns {path}")
            subprocess.run(["umount", path], capture_output=True, check=False)
            Path(path).unlink(missing_ok=True)
    if bridge_exists(paths):
        run(["ip", "link", "delete", paths.bridge], what=f"deleting the bridge {paths.bridge}")
    _stop(state.registry_pid, "docker-registry")
    state.containerd_pid = state.registry_pid = 0
    state.socket = ""
    state.save(paths)
    return forced


def status(run_dir: Path) -> dict[str, str]:
    paths = EnvPaths(run_dir)
    state = EnvState.load(paths)
    return {
        "run dir": str(paths.root),
        "containerd": f"pid {state.containerd_pid}, {cri_version(paths.socket) or 'not answering'}"
        if alive(state.containerd_pid, "containerd") else "not running",
        "registry": f"pid {state.registry_pid} on 127.0.0.1:{state.registry_port}"
        if alive(state.registry_pid, "docker-registry") else "not running",
        "socket": state.socket or "-",
        "shims": str(len(shims_of(paths.socket))),
        "mounts": str(len(mounts_below(paths.root))) if paths.root.exists() else "0",
        "bridge": paths.bridge if bridge_exists(paths) else "none",
    }
