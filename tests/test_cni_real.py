"""Real mode: ``kubeharness-cni`` makes a veth pair into a network namespace this test creates.

Needs root and iproute2. Traffic goes only from the host into the test's own namespace; the namespace
(and with it the container end) is deleted afterwards, and the host end goes with the pair.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_cni_plugin import addresses, assert_error, invoke, netconf

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="real mode needs root")

SERVE = """
import socket, sys
with socket.socket() as s:
    s.bind((sys.argv[1], 0)); s.listen()
    print(s.getsockname()[1], flush=True)
    peer, _ = s.accept()
    peer.sendall(b"hello from the pod"); peer.close()
"""


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"kh-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def real(tmp_path: Path, subnet: str) -> dict[str, Any]:
    return netconf(tmp_path, name="realnet", mode="real", ipam={"ranges": [[{"subnet": subnet}]],
                                                                "routes": [{"dst": "0.0.0.0/0"}]})


def links(name: str) -> list[dict[str, Any]]:
    out = subprocess.run(["ip", "-n", name, "-j", "addr", "show"], capture_output=True, text=True, check=True).stdout
    return list(json.loads(out))


def test_add_makes_a_reachable_pod_check_and_del(tmp_path: Path, netns: str) -> None:
    conf = real(tmp_path, "10.251.7.0/24")
    path = f"/var/run/netns/{netns}"
    added = invoke("ADD", conf, netns=path, cid="realpod")
    address = addresses(added)[0].split("/")[0]
    host_if = added.doc["interfaces"][0]["name"]
    assert added.doc["interfaces"][1]["sandbox"] == path and added.doc["ips"][0]["interface"] == 1
    eth0 = next(link for link in links(netns) if link["ifname"] == "eth0")
    assert eth0["address"] == added.doc["interfaces"][1]["mac"] and "UP" in eth0["flags"]
    server = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", SERVE, address],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        with socket.create_connection((address, port), timeout=5) as client:
            assert client.recv(100) == b"hello from the pod"
    finally:
        server.kill()
        server.wait()
    assert invoke("CHECK", {**conf, "prevResult": added.doc}, netns=path, cid="realpod").rc == 0
    assert_error(invoke("ADD", conf, netns=path, cid="other"), 103)  # eth0 is taken in that namespace
    assert invoke("DEL", conf, netns=path, cid="realpod").rc == 0
    assert not Path(f"/sys/class/net/{host_if}").exists()
    assert [link["ifname"] for link in links(netns)] == ["lo"]
    assert invoke("DEL", conf, netns=path, cid="realpod").rc == 0


def test_check_notices_a_missing_interface_and_add_a_missing_netns(tmp_path: Path, netns: str) -> None:
    conf = real(tmp_path, "10.251.8.0/24")
    path = f"/var/run/netns/{netns}"
    added = invoke("ADD", conf, netns=path)
    subprocess.run(["ip", "-n", netns, "link", "del", "eth0"], check=True)
    assert_error(invoke("CHECK", {**conf, "prevResult": added.doc}, netns=path), 101)
    assert invoke("DEL", conf, netns=path).rc == 0
    assert_error(invoke("ADD", conf, netns="/var/run/netns/kh-test-does-not-exist"), 3)
    assert (Path(conf["ipam"]["dataDir"]) / "realnet" / "state.json").exists()
