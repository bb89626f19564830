"""Security (issue 18): owner-only sockets whatever the umask, state directories of other users refused,
paths that stay below their roots also through symbolic links, HTTP endpoints bound to the configured address.

The daemons are the real ones started from the CLI (``python -m kubeharness.cli ...``), each stopped by
its PID; waits are polls with generous deadlines. Tests that chown a directory to another user need root.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from kubeharness import fsafe
from kubeharness.agent.server.httpserver import Answer, HttpServer
from kubeharness.agent.sources.static import FileSource
from kubeharness.clock import VirtualClock
from kubeharness.emulators.cri.cniconf import CniConfigError, conf_list_from_bytes
from kubeharness.emulators.cri.config import CriConfig
from kubeharness.emulators.cri.server import CriServer
from kubeharness.emulators.csi.paths import PathPolicy
from kubeharness.errors import FailedPrecondition, InvalidArgument
from kubeharness.faults import FaultEngine, FaultPlan
from kubeharness.faults.control import ControlServer
from kubeharness.wire.cri import api_pb2 as api
from tests.conftest import CriHarness, free_port, kubeharness
from tests.test_cni_plugin import assert_error, invoke, netconf

DEADLINE = 60.0  # seconds any poll below may take
NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


@pytest.fixture
def short() -> Iterator[Path]:
    """A short directory in /tmp for sockets (pytest's paths under xdist can exceed the unix limit)."""
    path = Path(tempfile.mkdtemp(prefix="khsec-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def mode_of(path: Path | str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def start_daemon(*args: str, output: Path) -> subprocess.Popen[bytes]:
    """A kubeharness daemon under a permissive umask (000), its output in ``output``."""
    with output.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "kubeharness.cli", *args], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=out, umask=0)


def wait_for(paths: list[Path], daemons: list[subprocess.Popen[bytes]], output: Path) -> None:
    deadline = time.monotonic() + DEADLINE
    while not all(p.exists() for p in paths):
        for d in daemons:
            assert d.poll() is None, f"a daemon exited with {d.returncode}:\n{output.read_text(errors='replace')}"
        assert time.monotonic() < deadline, f"missing {[str(p) for p in paths if not p.exists()]}:\n" \
                                            f"{output.read_text(errors='replace')}"
        time.sleep(0.05)


def stop(daemons: list[subprocess.Popen[bytes]]) -> None:
    for d in daemons:
        if d.poll() is None:
            os.kill(d.pid, signal.SIGTERM)
    for d in daemons:
        try:
            d.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            os.kill(d.pid, signal.SIGKILL)
            d.wait()


# ---- sockets ------------------------------------------------------------------------------------------

def test_every_daemon_socket_is_owner_only_under_umask_000(short: Path) -> None:
    output = short / "output.txt"
    cri, csi, proxy, fork = short / "cri.sock", short / "csi.sock", short / "proxy.sock", short / "cni.sock"
    daemons = [start_daemon("cri", "serve", "--socket", str(cri), "--state-dir", str(short / "cri"), output=output),
               start_daemon("csi", "serve", "--endpoint", f"unix://{csi}", "--state-dir", str(short / "csi"),
                            "--registration-dir", str(short / "reg"), output=output),
               start_daemon("cni", "serve", "--socket", str(fork), output=output)]
    try:
        wait_for([cri], daemons, output)
        daemons.append(start_daemon("cri", "proxy", "--listen", f"unix://{proxy}", "--upstream", f"unix://{cri}",
                                    output=output))
        sockets = [cri, short / "cri" / "faults.sock", csi, short / "reg" / "csi.kubeharness.io-reg.sock",
                   short / "csi" / "faults.sock", fork, proxy, Path(f"{proxy}.faults")]
        wait_for(sockets, daemons, output)
        modes = {str(p): oct(mode_of(p)) for p in sockets}
        assert modes == {str(p): "0o600" for p in sockets}
        assert all(os.lstat(p).st_uid == os.geteuid() and stat.S_ISSOCK(os.lstat(p).st_mode) for p in sockets)
        # directories the daemons made are not world-writable either, and state directories are private
        assert mode_of(short / "cri") == mode_of(short / "csi") == 0o700
        assert mode_of(short / "reg") == 0o755
        assert not [p for p in short.iterdir() if p.name.startswith(fsafe.PRIVATE_PREFIX)]
        with socket.socket(socket.AF_UNIX) as probe:  # and they serve
            probe.connect(str(fork))
    finally:
        stop(daemons)


async def test_the_cri_socket_is_never_seen_with_another_mode(tmp_path: Path, short: Path) -> None:
    """A watcher lstat()s the socket's path while the emulator starts under umask 000, again and again:
    it must only ever see the socket with mode 0600 (before: 0777 until a chmod after the bind)."""
    path = short / "cri.sock"
    seen: set[int] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            with contextlib.suppress(FileNotFoundError):
                seen.add(mode_of(path))

    watcher = threading.Thread(target=watch)
    old = os.umask(0)
    watcher.start()
    try:
        for _ in range(5):
            server = CriServer(str(path), tmp_path / "state", CriConfig(), VirtualClock())
            await server.start()
            await server.stop(grace=0)
    finally:
        done.set()
        watcher.join()
        os.umask(old)
    assert seen == {0o600}


def test_the_socket_is_bound_privately_then_linked_into_place(short: Path) -> None:
    final = short / "x.sock"
    calls: list[tuple[bool, int, int]] = []

    def bind(temporary: str) -> int:
        calls.append((final.exists(), mode_of(os.path.dirname(temporary)), os.lstat(os.path.dirname(temporary)).st_uid))
        sock.bind(temporary)
        return 7

    sock = socket.socket(socket.AF_UNIX)
    try:
        assert fsafe.serve_unix_socket(str(final), bind) == 7
        assert calls == [(False, 0o700, os.geteuid())]
        assert mode_of(final) == 0o600 and stat.S_ISSOCK(os.lstat(final).st_mode)
        assert sorted(p.name for p in short.iterdir()) == ["x.sock"]
        sock.listen(1)
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(final))
    finally:
        sock.close()
    # a path long enough that the private directory's name would not fit is bound by /proc/self/fd
    deep = short / ("d" * (88 - len(str(short))))
    deep.mkdir()
    long_final = deep / "s.sock"
    assert len(str(long_final)) + len("/.khsock-12345678/0123456789abcdef") > fsafe.MAX_SOCKET_PATH
    with socket.socket(socket.AF_UNIX) as sock2:
        fsafe.serve_unix_socket(str(long_final), sock2.bind)
        assert mode_of(long_final) == 0o600


async def test_the_control_socket_leaves_the_umask_alone_and_replaces_nothing(tmp_path: Path) -> None:
    """Before: ControlServer set the process's umask to 0177 around an await, so whatever another task
    created meanwhile got mode 0600 (a directory nobody could enter); and it deleted any file at its path."""
    made = tmp_path / "made-meanwhile"

    async def other_task() -> None:
        os.mkdir(made)

    umask = os.umask(0o022)
    os.umask(umask)
    task = asyncio.ensure_future(other_task())
    control = ControlServer(FaultEngine(FaultPlan(), VirtualClock()), tmp_path / "faults.sock")
    await control.start()
    try:
        await task
        assert mode_of(made) == 0o777 & ~umask
        assert mode_of(tmp_path / "faults.sock") == 0o600
        second = ControlServer(FaultEngine(FaultPlan(), VirtualClock()), tmp_path / "faults.sock")
        with pytest.raises(FailedPrecondition, match="already serving"):
            await second.start()  # a live control socket is not stolen
    finally:
        await control.stop()
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    with pytest.raises(FailedPrecondition, match="not a socket"):
        await ControlServer(FaultEngine(FaultPlan(), VirtualClock()), precious).start()
    assert precious.read_text() == "keep me"


# ---- state directories of another user ----------------------------------------------------------------

@pytest.fixture
def foreign(short: Path) -> Path:
    path = short / "theirs"
    path.mkdir()
    os.chown(path, NOBODY, NOBODY)
    return path


def refused(result: subprocess.CompletedProcess[str], directory: Path) -> None:
    assert result.returncode == 2, result
    assert str(directory) in result.stderr and f"uid {NOBODY}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@needs_root
def test_a_foreign_state_dir_is_refused_by_every_daemon(short: Path, foreign: Path) -> None:
    refused(kubeharness("cri", "serve", "--socket", str(short / "cri.sock"), "--state-dir", str(foreign)), foreign)
    refused(kubeharness("csi", "serve", "--endpoint", f"unix://{short / 'csi.sock'}", "--state-dir", str(foreign)),
            foreign)
    config = short / "kubelet.yaml"
    config.write_text(json.dumps({"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
                                  "containerRuntimeEndpoint": f"unix://{short / 'none.sock'}", "healthzPort": 0}))
    refused(kubeharness("agent", "--config", str(config), "--root-dir", str(foreign)), foreign)
    assert list(foreign.iterdir()) == []  # nothing touched: no lock, no journal, no socket
    assert sorted(p.name for p in short.iterdir()) == ["kubelet.yaml", "theirs"]


@needs_root
def test_a_foreign_cni_data_dir_is_refused(foreign: Path) -> None:
    doc = assert_error(invoke("ADD", netconf(foreign)), 5)
    assert str(foreign) in doc["details"] and f"uid {NOBODY}" in doc["details"], doc
    assert list(foreign.iterdir()) == []
    mine = foreign.parent / "mine"
    mine.mkdir()
    network = mine / "testnet"
    network.mkdir()
    os.chown(network, NOBODY, NOBODY)  # the network's own directory of another user: refused as well
    doc = assert_error(invoke("ADD", netconf(mine)), 5)
    assert str(network) in doc["details"], doc
    assert list(network.iterdir()) == []


# ---- paths below their roots --------------------------------------------------------------------------

async def test_a_container_log_never_follows_a_link_out_of_its_log_directory(cri: CriHarness, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    logs = cri.log_dir / "pod"
    logs.mkdir(parents=True)
    (logs / "planted").symlink_to(outside)
    cfg = cri.sandbox_config()
    cfg.log_directory = str(logs)
    sandbox = await cri.run_sandbox(cfg)
    await cri.pull("kubeharness.test/khelper:1")
    cid = await cri.create(sandbox, cfg, "planted")  # its log_path is planted/0.log
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await cri.runtime.StartContainer(api.StartContainerRequest(container_id=cid))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "symbolic link" in str(err.value.details())
    status = await cri.status(cid)
    assert (status.state, status.reason, status.exit_code) == (api.CONTAINER_EXITED, "StartError", 128)

    # a link swapped in between two opens (the kubelet's rotation asks for a fresh file) is refused too
    cid = await cri.create(sandbox, cfg, "d")
    await cri.start_container(cid)
    (logs / "d").rename(logs / "d-rotated")
    (logs / "d").symlink_to(outside)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await cri.runtime.ReopenContainerLog(api.ReopenContainerLogRequest(container_id=cid))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert list(outside.iterdir()) == []


def test_csi_paths_may_not_leave_their_roots_through_a_link(tmp_path: Path) -> None:
    root, outside = tmp_path / "kubelet", tmp_path / "etc"
    (root / "pods").mkdir(parents=True)
    outside.mkdir()
    (root / "pods" / "evil").symlink_to(outside)
    (root / "pods" / "fine").symlink_to(root / "pods")  # a link that stays inside is fine
    policy = PathPolicy([str(root)])
    with pytest.raises(InvalidArgument, match="symbolic link") as err:
        policy.check("target_path", str(root / "pods" / "evil" / "vol" / "mount"))
    assert "target_path" in err.value.message and str(outside) in err.value.message
    assert policy.check("target_path", str(root / "pods" / "fine" / "x")) == str(root / "pods" / "fine" / "x")
    linked_root = tmp_path / "linked"  # a root that is itself a link keeps working
    linked_root.symlink_to(root)
    assert PathPolicy([str(linked_root)]).check("target_path", str(linked_root / "pods" / "a"))
    (root / "pods" / "self").symlink_to(root)
    with pytest.raises(InvalidArgument):
        policy.check("staging_target_path", str(root / "pods" / "self"))


async def test_csi_publish_through_a_planted_link_touches_nothing_outside(tmp_path: Path) -> None:
    from tests.test_csi import mount_cap
    from tests.test_csi import start as start_csi
    from tests.test_csi import stop as stop_csi

    plugin = await start_csi(tmp_path)
    try:
        outside = tmp_path / "outside"
        outside.mkdir()
        volume = await plugin.create()
        await plugin.attach(volume)
        await plugin.stage(volume)
        (plugin.kubelet / "pods").mkdir(parents=True, exist_ok=True)
        (plugin.kubelet / "pods" / "pod").symlink_to(outside)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await plugin.node.NodePublishVolume(plugin.publish_request(volume, cap=mount_cap()))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert list(outside.iterdir()) == []
    finally:
        await stop_csi(plugin)


def test_cni_network_names_cannot_name_paths() -> None:
    for name in ("../../etc/x", "a/b", ".hidden", "-x"):
        conf = {"cniVersion": "1.0.0", "name": name, "plugins": [{"type": "bridge"}]}
        with pytest.raises(CniConfigError, match="invalid network name"):
            conf_list_from_bytes(json.dumps(conf).encode())
    assert conf_list_from_bytes(json.dumps({"cniVersion": "1.0.0", "name": "k8s-pod.net_1",
                                            "plugins": [{"type": "bridge"}]}).encode()).name == "k8s-pod.net_1"


async def test_a_static_pod_link_is_followed_wherever_it_points_as_kubelet_does(tmp_path: Path) -> None:
    # the static pod path is trusted as kubelet trusts it (writing there runs any pod, hostPath included), and
    # the same manifests must give the same pods on the agent and on a kubelet
    pods, outside = tmp_path / "manifests", tmp_path / "elsewhere"
    pods.mkdir()
    outside.mkdir()
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
                "spec": {"containers": [{"name": "app", "image": "busybox:1.36"}]}}
    (outside / "web.json").write_text(json.dumps(manifest))
    (pods / "web.json").symlink_to(outside / "web.json")
    (pods / "real").mkdir()
    (pods / "real" / "db.json").write_text(json.dumps({**manifest, "metadata": {"name": "db"}}))
    (pods / "db.json").symlink_to(pods / "real" / "db.json")  # a link that stays inside is read
    source = FileSource(pods, "node-a", VirtualClock())
    update = await source.check_once()
    assert update is not None and sorted(update.pods) == ["db-node-a_default", "web-node-a_default"]
    assert source.errors == {}


# ---- HTTP endpoints on the configured address only ----------------------------------------------------

def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=10):
            return True
    except OSError:
        return False


def test_the_agent_serves_only_on_the_configured_addresses(short: Path) -> None:
    read_only, healthz = free_port(), free_port()
    config = short / "kubelet.yaml"
    config.write_text(json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "containerRuntimeEndpoint": f"unix://{short / 'none.sock'}", "address": "127.0.0.2",
        "readOnlyPort": read_only, "healthzBindAddress": "127.0.0.3", "healthzPort": healthz}))
    output = short / "output.txt"
    agent = start_daemon("agent", "--config", str(config), "--root-dir", str(short / "root"), output=output)
    try:
        deadline = time.monotonic() + DEADLINE
        while f"127.0.0.3:{healthz}" not in output.read_text(errors="replace"):
            assert agent.poll() is None, output.read_text(errors="replace")
            assert time.monotonic() < deadline, output.read_text(errors="replace")
            time.sleep(0.05)
        assert reachable("127.0.0.2", read_only) and reachable("127.0.0.3", healthz)
        for host in ("127.0.0.1", "127.0.0.4"):
            assert not reachable(host, read_only) and not reachable(host, healthz)
    finally:
        stop([agent])


async def test_an_http_server_takes_only_an_address_literal() -> None:
    server = HttpServer("localhost", 0, {"/healthz": lambda: Answer(200, b"ok")})
    with pytest.raises(ValueError, match="not an IP address"):
        await server.start()
    empty = HttpServer("", 0, {"/healthz": lambda: Answer(200, b"ok")})  # asyncio: "" would be every interface
    with pytest.raises(ValueError, match="not an IP address"):
        await empty.start()
