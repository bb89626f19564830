"""The fast path of ``kubeharness-cni``: the C shim and the fork server, against the Python entry point.

The shim is compiled with gcc into a temporary bin directory and a fork server (``kubeharness cni serve``)
runs as a subprocess, stopped by its PID. Every answer through the shim must be byte for byte what the
Python plugin prints for the same input, with the same exit status, including errors, crashes and hangs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from kubeharness.cli import main as cli_main
from kubeharness.emulators.cni import forkproto, shim
from tests.test_cni_faults import faulty
from tests.test_cni_plugin import PLUGIN, REFERENCE, Answer, addresses, invoke, netconf, state

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc builds the shim")


class Server:
    """A ``kubeharness cni serve`` subprocess on ``socket``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.process = subprocess.Popen([sys.executable, "-m", "kubeharness.cli", "cni", "serve", "--socket",
                                         str(path)], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(500):
            assert self.process.poll() is None, self.process.communicate()
            try:
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.connect(str(path))
                    if probe.recv(1) == b"h":
                        return
            except OSError:
                time.sleep(0.02)
        raise AssertionError("the fork server did not start")

    @property
    def pid(self) -> int:
        return self.process.pid

    def children(self) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == self.pid:
                    found.append(int(entry.name))
        return found

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGTERM)
        assert self.process.wait(timeout=30) == 0
        self.process.stderr.close()  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def fast(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Server]]:
    """The installed shim and the fork server it talks to."""
    root = tmp_path_factory.mktemp("fast")
    target = shim.install(root / "bin", str(root / "cni.sock"))
    server = Server(root / "cni.sock")
    yield str(target), server
    server.stop()


def both(tmp_path: Path, fast: tuple[str, Server], steps: list[tuple[Any, ...]]) -> None:
    """Run each step against the Python plugin and through the shim, each with its own data directory."""
    shim_path, server = fast
    for index, (command, conf, kwargs) in enumerate(steps):
        answers = []
        for plugin, data in ((PLUGIN, "direct"), (shim_path, "shim")):
            doc = conf
            if isinstance(conf, dict) and "ipam" in conf:
                doc = {**conf, "ipam": {**conf["ipam"], "dataDir": str(tmp_path / data)}}
            answers.append(invoke(command, doc, plugin=plugin, **kwargs))
        direct, through = answers
        assert (through.rc, through.stdout) == (direct.rc, direct.stdout), (index, command, direct, through)
    assert server.process.poll() is None  # so the answers came through it, not from the fallback


def test_answers_are_byte_identical_to_the_python_plugin(tmp_path: Path, fast: tuple[str, Server]) -> None:
    conf = netconf(tmp_path, "1.1.0")
    old = netconf(tmp_path, "1.0.0")
    added = invoke("ADD", netconf(tmp_path / "probe")).doc
    no_env = {"cid": None, "ifname": None, "netns": None}
    both(tmp_path, fast, [
        ("VERSION", {"cniVersion": "1.0.0"}, no_env),
        ("VERSION", None, no_env),
        ("ADD", conf, {}),
        ("ADD", conf, {}),  # a second ADD for the same attachment: error 100
        ("ADD", old, {"cid": "c2"}),
        ("CHECK", {**conf, "prevResult": added}, {}),
        ("CHECK", {**conf, "prevResult": {"cniVersion": "1.1.0", "ips": []}}, {}),  # mismatch
        ("CHECK", conf, {"cid": "nobody"}),  # no prevResult
        ("STATUS", conf, no_env),
        ("STATUS", old, no_env),  # needs 1.1.0
        ("GC", {**conf, "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]}, no_env),
        ("DEL", conf, {}),
        ("DEL", conf, {}),  # repeated DEL succeeds
        (None, conf, {}),  # no CNI_COMMAND: error 4
        ("ADD", conf, {"ifname": "a/b"}),
        ("ADD", b"{not json", {}),
        ("ADD", {**conf, "ipam": {**conf["ipam"], "ranges": [[{"subnet": "10.0.0.0/33"}]]}}, {}),
        ("ADD", conf, {"args": "novalue"}),
    ])


def test_parallel_adds_get_distinct_addresses(tmp_path: Path, fast: tuple[str, Server]) -> None:
    conf = netconf(tmp_path, ipam={"ranges": [[{"subnet": "10.40.0.0/24"}]]})
    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(lambda i: invoke("ADD", conf, cid=f"p{i}", plugin=fast[0]), range(50)))
    got = [address for answer in answers for address in addresses(answer)]
    assert len(set(got)) == 50
    assert sorted(state(conf)["attachments"]) == sorted(f"p{i}/eth0" for i in range(50))


def test_a_sigkill_crash_looks_the_same_and_keeps_the_store(tmp_path: Path, fast: tuple[str, Server]) -> None:
    conf = faulty(tmp_path, [{"name": "kill", "where": "cni", "method": "*",
                              "when": {"sequence": "2*off -> 2*on -> off"}, "action": {"crash": {"how": "sigkill"}}}])

    def run(command: str, cid: str) -> Answer:
        return invoke(command, conf, cid=cid, plugin=fast[0])

    run("ADD", "a")
    run("ADD", "b")
    killed_add, killed_del = run("ADD", "c"), run("DEL", "a")
    assert (killed_add.rc, killed_add.stdout, killed_del.rc, killed_del.stdout) == (-9, "", -9, "")
    directory = Path(conf["ipam"]["dataDir"]) / conf["name"]
    assert list(directory.glob(".state.tmp.*"))  # written, never renamed
    assert sorted(state(conf)["attachments"]) == ["a/eth0", "b/eth0"]
    assert addresses(run("ADD", "c")) == ["10.30.0.4/24"]
    assert not list(directory.glob(".state.tmp.*"))


def test_a_crash_with_an_exit_code_gives_that_code(tmp_path: Path, fast: tuple[str, Server]) -> None:
    conf = faulty(tmp_path, [{"name": "die", "where": "cni", "method": "ADD",
                              "action": {"crash": {"how": "exit", "exit_code": 7}}}])
    crashed = invoke("ADD", conf, plugin=fast[0])
    assert (crashed.rc, crashed.stdout) == (7, "")
    assert state(conf)["attachments"] == {}


def test_a_hang_killed_by_the_runtime_leaves_no_child(tmp_path: Path, fast: tuple[str, Server]) -> None:
    shim_path, server = fast
    conf = faulty(tmp_path, [{"name": "stuck", "where": "cni", "method": "ADD", "action": "cni_hang"}])
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "h", "CNI_NETNS": "/x",
           "CNI_IFNAME": "eth0", "CNI_PATH": str(REFERENCE)}
    before = set(server.children())
    runtime = subprocess.Popen([shim_path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    assert runtime.stdin is not None
    runtime.stdin.write(json.dumps(conf).encode())
    runtime.stdin.close()
    for _ in range(250):
        hung = set(server.children()) - before
        if hung:
            break
        time.sleep(0.02)
    (child,) = hung
    time.sleep(0.3)
    assert runtime.poll() is None and Path(f"/proc/{child}").exists()  # hanging, as the plugin would
    runtime.kill()  # the runtime's timeout
    assert runtime.wait(timeout=10) == -signal.SIGKILL
    runtime.stdout.close()  # type: ignore[union-attr]
    for _ in range(250):
        if not Path(f"/proc/{child}").exists():
            break
        time.sleep(0.02)
    assert not Path(f"/proc/{child}").exists()  # killed and reaped
    assert invoke("VERSION", None, plugin=shim_path).rc == 0  # and the server serves on


def test_without_the_server_the_shim_runs_the_python_plugin(tmp_path: Path) -> None:
    target = shim.install(tmp_path / "bin", str(tmp_path / "cni.sock"))
    server = Server(tmp_path / "cni.sock")
    conf = netconf(tmp_path)
    assert addresses(invoke("ADD", conf, cid="a", plugin=str(target))) == ["10.30.0.2/24"]
    server.stop()
    assert not (tmp_path / "cni.sock").exists()
    assert addresses(invoke("ADD", conf, cid="b", plugin=str(target))) == ["10.30.0.3/24"]
    direct = invoke("VERSION", None, cid=None, ifname=None, netns=None)
    through = invoke("VERSION", None, cid=None, ifname=None, netns=None, plugin=str(target))
    assert (through.rc, through.stdout) == (direct.rc, direct.stdout)


def test_a_shim_installed_over_its_fallback_is_refused(tmp_path: Path) -> None:
    with pytest.raises(shim.ShimError, match="entry point itself"):
        shim.install(Path(PLUGIN).parent, str(tmp_path / "cni.sock"))
    assert cli_main(["cni", "install", "--bin-dir", str(tmp_path / "bin"), "--socket", str(tmp_path / "s")]) == 0
    assert os.access(tmp_path / "bin" / "kubeharness-cni", os.X_OK)


def test_request_encoding() -> None:
    request = forkproto.Request(0o22, "/tmp", {"CNI_COMMAND": "ADD", "EMPTY": "", "EQ": "a=b"}, b'{"x": 1}')
    data = forkproto.encode_request(request)
    assert forkproto.parse_request(data) == request
    assert all(forkproto.parse_request(data[:cut]) is None for cut in range(len(data)))
    with pytest.raises(ValueError, match="after the request"):
        forkproto.parse_request(data + b"x")
    bad_env = forkproto.encode_request(forkproto.Request(0, "/", {}, b"")).replace(
        b"\0\0\0\0\0\0\0\0", b"\0\0\0\x04ABC\0\0\0\0\0", 1)
    with pytest.raises(ValueError, match="not KEY=VALUE"):
        forkproto.parse_request(bad_env)
    with pytest.raises(ValueError, match="over the limit"):
        forkproto.parse_request(b"\0\0\0\0\xff\xff\xff\xff")


def test_a_malformed_request_gets_a_cni_error(fast: tuple[str, Server]) -> None:
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(fast[1].path))
        assert conn.recv(5 + len(forkproto.PROTOCOL)) == forkproto.frame(forkproto.HELLO, forkproto.PROTOCOL)
        conn.sendall(b"\0\0\0\0\0\0\0\0\0\0\0\x01A\0\0\0\0")  # environ without its NUL
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    assert data[:1] == forkproto.STDOUT
    size = int.from_bytes(data[1:5], "big")
    doc = json.loads(data[5:5 + size])
    assert doc["code"] == 104 and "NUL" in doc["details"]
    assert data[5 + size:] == forkproto.frame(forkproto.EXITED, (1).to_bytes(4, "big"))
