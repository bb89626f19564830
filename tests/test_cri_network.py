"""Pod networking through CNI plugins, through the real gRPC socket, with real plugin executables.

Two kinds of plugins run here: Debian's reference plugins (bridge, host-local, loopback, tuning from
/usr/lib/cni) in ``netns: real`` mode, which needs root and makes real namespaces, veths and a
uniquely named bridge (all removed at the end of each test); and ``recorder``, a small real CNI plugin
written by the test, which appends every call (command, environment, stdin) to a JSON-lines file and
answers a fixed loopback address, so the order of calls, ``prevResult``, CNI_ARGS and runtimeConfig can
be checked in ``netns: emulated`` mode without root.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from kubeharness.clock import VirtualClock
from kubeharness.emulators.cri.config import CriConfig
from kubeharness.wire.cri import api_pb2 as api
from tests.conftest import CriHarness

REFERENCE_PLUGINS = Path("/usr/lib/cni")
KUBEHARNESS_CNI = Path(sys.executable).parent / "kubeharness-cni"
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not (REFERENCE_PLUGINS / "bridge").exists() or shutil.which("ip") is None,
    reason="real network namespaces need root, iproute2 and the reference CNI plugins",
)

RECORDER = """#!{python}
import json, os, sys
conf = json.load(sys.stdin)
cmd = os.environ.get("CNI_COMMAND", "")
entry = {{"cmd": cmd, "tag": conf.get("tag"), "name": conf.get("name"), "cniVersion": conf.get("cniVersion"),
         "prev": conf.get("prevResult"), "runtimeConfig": conf.get("runtimeConfig"),
         "env": {{k: v for k, v in os.environ.items() if k.startswith("CNI_")}}}}
with open(conf["log"], "a") as f:
    f.write(json.dumps(entry) + "\\n")
marker = conf.get("failOn", {{}}).get(cmd)
if marker and os.path.exists(marker):
    print(json.dumps({{"cniVersion": conf.get("cniVersion"), "code": 11, "msg": "recorder refuses " + cmd,
                      "details": "marker present"}}))
    sys.exit(1)
if cmd == "ADD":
    prev = conf.get("prevResult")
    if prev is None and "address" in conf:
        prev = {{"cniVersion": conf["cniVersion"],
                "interfaces": [{{"name": os.environ["CNI_IFNAME"], "sandbox": os.environ["CNI_NETNS"]}}],
                "ips": [{{"address": a, "interface": 0}} for a in conf["address"].split(",")]}}
    print(json.dumps(prev or {{"cniVersion": conf.get("cniVersion")}}))
"""


# -- the CNI set-up of one test -------------------------------------------------------------------------


class CniSetup:
    """A test's CNI directories: config, plugins (reference plugins linked in, plus the recorder) and logs."""

    def __init__(self, root: Path) -> None:
        self.conf_dir = root / "net.d"
        self.bin_dir = root / "cni-bin"
        self.log = root / "calls.jsonl"
        self.ipam_dir = root / "ipam"
        self.conf_dir.mkdir()
        self.bin_dir.mkdir()
        for plugin in ("bridge", "host-local", "loopback", "tuning"):
            if (REFERENCE_PLUGINS / plugin).exists():
                (self.bin_dir / plugin).symlink_to(REFERENCE_PLUGINS / plugin)
        recorder = self.bin_dir / "recorder"
        recorder.write_text(RECORDER.format(python=sys.executable))
        recorder.chmod(0o755)
        suffix = secrets.token_hex(4)
        self.bridge = f"khb{suffix}"  # unique per test, deleted at its end
        self.subnet = ipaddress.ip_network(f"10.250.{secrets.randbelow(250)}.0/24")

    def write(self, name: str, doc: dict[str, Any]) -> Path:
        path = self.conf_dir / name
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.rename(path)
        return path

    def recorder(self, tag: str, address: str | None = None, **extra: Any) -> dict[str, Any]:
        plugin: dict[str, Any] = {"type": "recorder", "tag": tag, "log": str(self.log), **extra}
        if address is not None:
            plugin["address"] = address
        return plugin

    def bridge_plugin(self, range_start: str = "", range_end: str = "") -> dict[str, Any]:
        ipam_range: dict[str, str] = {"subnet": str(self.subnet)}
        if range_start:
            ipam_range.update(rangeStart=range_start, rangeEnd=range_end or range_start)
        return {
            "type": "bridge", "bridge": self.bridge, "isGateway": False, "ipMasq": False,
            "ipam": {"type": "host-local", "ranges": [[ipam_range]], "dataDir": str(self.ipam_dir)},
        }

    def conflist(self, plugins: list[dict[str, Any]], name: str = "khnet", version: str = "1.0.0") -> dict[str, Any]:
        return {"cniVersion": version, "name": name, "plugins": plugins}

    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def leases(self, network: str = "khnet") -> list[str]:
        directory = self.ipam_dir / network
        if not directory.exists():
            return []
        return sorted(p.name for p in directory.iterdir() if p.name not in ("lock",) and not p.name.startswith("last"))


@pytest.fixture
def cni(tmp_path: Path) -> Iterator[CniSetup]:
    setup = CniSetup(tmp_path)
    yield setup
    # the bridge plugin creates its bridge before it enters the pod's namespace, so also on failures
    if shutil.which("ip") is not None and Path(f"/sys/class/net/{setup.bridge}").exists():
        subprocess.run(["ip", "link", "delete", setup.bridge], check=False, capture_output=True)


@pytest.fixture
def cri_config(cni: CniSetup) -> CriConfig:
    return CriConfig(cni_conf_dir=str(cni.conf_dir), cni_bin_dir=str(cni.bin_dir))


@pytest.fixture
async def real_cri(tmp_path: Path, cni: CniSetup) -> AsyncIterator[CriHarness]:
    """An emulator with real network namespaces; every namespace and the bridge are gone afterwards."""
    config = CriConfig(cni_conf_dir=str(cni.conf_dir), cni_bin_dir=str(cni.bin_dir), netns="real")
    harness = CriHarness(root=tmp_path, clock=VirtualClock(), config=config)
    await harness.start()
    try:
        yield harness
    finally:
        leftovers = []
        if harness.server is not None:
            leftovers = [sb.netns_path for sb in harness.server.runtime.sandboxes]
        await harness.stop()
        delete_namespaces(leftovers)


def delete_namespaces(paths: list[str]) -> None:
    """Namespaces a failed test left behind (a passing one leaves none)."""
    for path in paths:
        if path.startswith("/var/run/netns/kh-") and Path(path).exists():
            subprocess.run(["ip", "netns", "delete", os.path.basename(path)], check=False)


# -- helpers ------------------------------------------------------------------------------------------


async def expect_error(call: Awaitable[object], code: grpc.StatusCode = grpc.StatusCode.UNKNOWN) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    return info.value.details() or ""


async def sandbox_status(cri: CriHarness, sid: str, verbose: bool = False) -> api.PodSandboxStatusResponse:
    return await cri.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=sid, verbose=verbose))


async def netns_of(cri: CriHarness, sid: str) -> str:
    info = json.loads((await sandbox_status(cri, sid, verbose=True)).info["info"])
    return str(info["netNamespacePath"])


async def stop(cri: CriHarness, sid: str) -> None:
    await cri.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=sid))


async def remove(cri: CriHarness, sid: str) -> None:
    await cri.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=sid))


async def network_condition(cri: CriHarness) -> api.RuntimeCondition:
    status = await cri.runtime.Status(api.StatusRequest())
    return next(c for c in status.status.conditions if c.type == "NetworkReady")


async def ip_cmd(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        "ip", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await process.communicate()
    return process.returncode or 0, out.decode()


def exists(path: str) -> bool:
    return os.path.exists(path)


def sandbox_id_in(message: str) -> str:
    return message.split('sandbox "', 1)[1].split('"', 1)[0]


# -- reference plugins, real namespaces ---------------------------------------------------------------


@needs_root
async def test_bridge_and_host_local_give_the_pod_an_ip_in_a_real_namespace(real_cri: CriHarness,
                                                                            cni: CniSetup) -> None:
    cni.write("10-khnet.conflist", cni.conflist([cni.bridge_plugin()]))
    sid = await real_cri.run_sandbox(name="web")

    status = (await sandbox_status(real_cri, sid)).status
    ip = ipaddress.ip_address(status.network.ip)
    assert ip in cni.subnet and not status.network.additional_ips
    netns = await netns_of(real_cri, sid)
    assert netns.startswith("/var/run/netns/kh-") and exists(netns)
    rc, eth0 = await ip_cmd("-n", os.path.basename(netns), "-o", "addr", "show", "dev", "eth0")
    assert rc == 0 and f"inet {ip}/24" in eth0
    rc, lo = await ip_cmd("-n", os.path.basename(netns), "-o", "link", "show", "lo")
    assert rc == 0 and "UP" in lo  # containerd's cni-loopback network ran the loopback plugin
    rc, ports = await ip_cmd("-o", "link", "show", "master", cni.bridge)
    assert rc == 0 and "veth" in ports  # the host end of the pod's veth is on the bridge
    assert cni.leases() == [str(ip)]

    await stop(real_cri, sid)  # DEL frees the lease and, as in containerd, the namespace goes at stop
    assert cni.leases() == []
    assert not exists(netns)
    assert (await sandbox_status(real_cri, sid)).status.network.ip == ""
    rc, ports = await ip_cmd("-o", "link", "show", "master", cni.bridge)
    assert "veth" not in ports
    await stop(real_cri, sid)  # idempotent
    await remove(real_cri, sid)
    assert (await real_cri.runtime.ListPodSandbox(api.ListPodSandboxRequest())).items == []


@needs_root
async def test_chained_plugins_get_the_previous_result(real_cri: CriHarness, cni: CniSetup) -> None:
    """tuning only works chained: it changes the interface the bridge plugin's result names."""
    mac = "c2:11:22:33:44:55"
    cni.write("10-khnet.conflist", cni.conflist([cni.bridge_plugin(), {"type": "tuning", "mac": mac}]))
    sid = await real_cri.run_sandbox(name="tuned")
    netns = await netns_of(real_cri, sid)
    rc, eth0 = await ip_cmd("-n", os.path.basename(netns), "-o", "link", "show", "eth0")
    assert rc == 0 and mac in eth0
    await remove(real_cri, sid)  # remove without stop: stops and tears down first
    assert cni.leases() == [] and not exists(netns)


@needs_root
async def test_exhausted_range_fails_run_in_containerds_words_and_cleans_up(real_cri: CriHarness,
                                                                            cni: CniSetup) -> None:
    only = str(cni.subnet.network_address + 5)
    # the recorder after bridge never sees ADD when bridge fails, but DEL (in reverse order) reaches it first
    cni.write("10-khnet.conflist", cni.conflist([cni.bridge_plugin(only), cni.recorder("after")]))
    first = await real_cri.run_sandbox(name="first")
    assert (await sandbox_status(real_cri, first)).status.network.ip == only

    message = await expect_error(real_cri.run_sandbox(name="second"))
    sid = sandbox_id_in(message)
    assert message.startswith(f'failed to setup network for sandbox "{sid}": plugin type="bridge" failed (add): ')
    assert "no IP addresses available in range set" in message
    dels = [c for c in cni.calls() if c["cmd"] == "DEL"]
    assert [c["env"]["CNI_CONTAINERID"] for c in dels] == [sid]  # cleanup DEL ran for the failed sandbox
    assert not exists(dels[0]["env"]["CNI_NETNS"])  # and its namespace is gone
    assert cni.leases() == [only]  # the first pod keeps its address
    _, ports = await ip_cmd("-o", "link", "show", "master", cni.bridge)
    assert ports.count("veth") == 1
    listed = (await real_cri.runtime.ListPodSandbox(api.ListPodSandboxRequest())).items
    assert [sb.id for sb in listed] == [first]

    await remove(real_cri, first)
    retry = await real_cri.run_sandbox(name="second")  # the name was released; the address is free again
    assert (await sandbox_status(real_cri, retry)).status.network.ip == only
    await remove(real_cri, retry)


@needs_root
async def test_real_namespaces_without_cni_keep_the_pool_addresses(tmp_path: Path) -> None:
    harness = CriHarness(root=tmp_path, clock=VirtualClock(), config=CriConfig(netns="real"))
    await harness.start()
    made: list[str] = []
    try:
        sid = await harness.run_sandbox(name="pooled")
        assert (await sandbox_status(harness, sid)).status.network.ip == "127.77.0.2"
        made.append(await netns_of(harness, sid))
        assert made[0].startswith("/var/run/netns/kh-") and exists(made[0])
        await remove(harness, sid)
        assert not exists(made[0])
    finally:
        await harness.stop()
        delete_namespaces(made)


# -- the recorder plugin, emulated namespaces ---------------------------------------------------------------


async def test_add_in_order_del_in_reverse_with_cached_result(cri: CriHarness, cni: CniSetup) -> None:
    plugins = [
        cni.recorder("a", "127.31.0.7/8"),
        cni.recorder("b", capabilities={"portMappings": True, "dns": True, "bandwidth": False}),
    ]
    cni.write("10-khnet.conflist", cni.conflist(plugins, version="0.4.0"))
    cfg = cri.sandbox_config(name="chain", namespace="team", uid="u-1")
    cfg.annotations["kubernetes.io/ingress-bandwidth"] = "10M"
    cfg.port_mappings.add(container_port=80, host_port=8080, protocol=api.TCP)
    cfg.port_mappings.add(container_port=81)  # no host port: not passed on
    cfg.dns_config.servers.append("10.0.0.10")
    cfg.dns_config.searches.append("team.svc.cluster.local")
    sid = await cri.run_sandbox(cfg)
    assert (await sandbox_status(cri, sid)).status.network.ip == "127.31.0.7"

    await stop(cri, sid)
    calls = cni.calls()
    assert [(c["cmd"], c["tag"]) for c in calls] == [("ADD", "a"), ("ADD", "b"), ("DEL", "b"), ("DEL", "a")]
    add_a, add_b, del_b, del_a = calls
    assert add_a["prev"] is None and add_b["prev"]["ips"] == [{"address": "127.31.0.7/8", "interface": 0}]
    assert del_b["prev"] == add_b["prev"] == del_a["prev"]  # DEL gets the cached final result
    for call in calls:
        assert call["name"] == "khnet" and call["cniVersion"] == "0.4.0"
        env = call["env"]
        assert env["CNI_CONTAINERID"] == sid and env["CNI_IFNAME"] == "eth0"
        assert env["CNI_NETNS"].startswith("/var/run/netns/cni-")  # the emulated placeholder
        assert env["CNI_ARGS"] == f"IgnoreUnknown=1;K8S_POD_NAMESPACE=team;K8S_POD_NAME=chain;" \
                                  f"K8S_POD_INFRA_CONTAINER_ID={sid};K8S_POD_UID=u-1"
        assert env["CNI_PATH"] == str(cni.bin_dir)
    assert add_a["runtimeConfig"] is None  # "a" declares no capabilities
    assert add_b["runtimeConfig"] == {  # only what "b" declares, under containerd's Go field names
        "portMappings": [{"HostPort": 8080, "ContainerPort": 80, "Protocol": "tcp", "HostIP": ""}],
        "dns": {"Servers": ["10.0.0.10"], "Searches": ["team.svc.cluster.local"], "Options": []},
    }
    assert not list((cri.state_dir / "cni" / "results").iterdir())  # the cache entry went with DEL
    await stop(cri, sid)  # idempotent, and no second DEL
    assert len(cni.calls()) == 4


async def test_network_not_ready_until_a_valid_config_appears(cri: CriHarness, cni: CniSetup) -> None:
    condition = await network_condition(cri)
    assert (condition.status, condition.reason, condition.message) == (
        False, "NetworkPluginNotReady", "Network plugin returns error: cni plugin not initialized")
    message = await expect_error(cri.run_sandbox(name="early"))
    sid = sandbox_id_in(message)
    assert message == f'failed to setup network for sandbox "{sid}": cni plugin not initialized'

    # the first file by name is the one containerd loads; a broken one keeps CNI uninitialized
    cni.write("10-broken.conf", {"cniVersion": "1.0.0", "name": "broken"})  # no "type"
    cni.write("20-khnet.conflist", cni.conflist([cni.recorder("a", "127.31.0.8/8")]))
    assert not (await network_condition(cri)).status
    verbose = await cri.runtime.Status(api.StatusRequest(verbose=True))
    assert "10-broken.conf" in verbose.info["lastCNILoadStatus"]

    (cni.conf_dir / "10-broken.conf").unlink()
    assert (await network_condition(cri)).status
    verbose = await cri.runtime.Status(api.StatusRequest(verbose=True))
    assert verbose.info["lastCNILoadStatus"] == "OK"
    sid = await cri.run_sandbox(name="early")  # the failed attempt left its name free
    assert (await sandbox_status(cri, sid)).status.network.ip == "127.31.0.8"
    await remove(cri, sid)


async def test_host_network_pods_skip_cni(cri: CriHarness, cni: CniSetup) -> None:
    cni.write("10-khnet.conflist", cni.conflist([cni.recorder("a", "127.31.0.9/8")]))
    sid = await cri.run_sandbox(name="host", host_network=True)
    assert (await sandbox_status(cri, sid)).status.network.ip == ""
    await remove(cri, sid)
    assert cni.calls() == []


async def test_missing_plugin_fails_run_and_del_still_runs(cri: CriHarness, cni: CniSetup) -> None:
    cni.write("10-khnet.conflist", cni.conflist([{"type": "no-such-plugin", "name": "x"}, cni.recorder("b")]))
    message = await expect_error(cri.run_sandbox(name="broken"))
    sid = sandbox_id_in(message)
    assert message == (
        f'failed to setup network for sandbox "{sid}": plugin type="no-such-plugin" name="x" failed (add): '
        f'failed to find plugin "no-such-plugin" in path [{cni.bin_dir}]'
    )
    assert [(c["cmd"], c["tag"]) for c in cni.calls()] == [("DEL", "b")]  # cleanup, in reverse order


async def test_kernel_plugins_in_emulated_mode_say_why(cri: CriHarness, cni: CniSetup) -> None:
    cni.write("10-khnet.conflist", cni.conflist([cni.bridge_plugin()]))
    message = await expect_error(cri.run_sandbox(name="bridged"))
    assert 'plugin type="bridge" failed (add): ' in message
    assert "netns: emulated" in message and "netns: real" in message


async def test_result_without_eth0_address_fails_and_cleans_up(cri: CriHarness, cni: CniSetup) -> None:
    cni.write("10-khnet.conflist", cni.conflist([cni.recorder("a")]))  # answers no IPs
    message = await expect_error(cri.run_sandbox(name="noip"))
    sid = sandbox_id_in(message)
    assert message == f'failed to setup network for sandbox "{sid}": failed to find network info for sandbox "{sid}"'
    assert [c["cmd"] for c in cni.calls()] == ["ADD", "DEL"]


async def test_dual_stack_result_reports_additional_ips(cri: CriHarness, cni: CniSetup) -> None:
    cni.write("10-khnet.conflist", cni.conflist([cni.recorder("a", "::1/128,127.31.0.10/8")]))
    sid = await cri.run_sandbox(name="dual")
    network = (await sandbox_status(cri, sid)).status.network
    assert network.ip == "127.31.0.10"  # containerd prefers the IPv4 address
    assert [p.ip for p in network.additional_ips] == ["::1"]
    await remove(cri, sid)


async def test_failing_del_fails_stop_until_it_succeeds(cri: CriHarness, cni: CniSetup, tmp_path: Path) -> None:
    marker = tmp_path / "refuse-del"
    cni.write("10-khnet.conflist", cni.conflist([cni.recorder("a", "127.31.0.11/8", failOn={"DEL": str(marker)})]))
    sid = await cri.run_sandbox(name="sticky")
    marker.touch()
    message = await expect_error(stop(cri, sid))
    assert message == (f'failed to destroy network for sandbox "{sid}": plugin type="recorder" failed (delete): '
                       "recorder refuses DEL; marker present")
    assert (await sandbox_status(cri, sid)).status.state == api.SANDBOX_NOTREADY
    await expect_error(remove(cri, sid))  # remove needs the teardown too
    marker.unlink()
    await stop(cri, sid)  # as the kubelet retries
    await remove(cri, sid)
    assert [c["cmd"] for c in cni.calls()] == ["ADD", "DEL", "DEL", "DEL"]


async def test_cni_ip_survives_a_restart_and_del_uses_the_cache(cri: CriHarness, cni: CniSetup) -> None:
    cni.write("10-khnet.conflist", cni.conflist([cni.recorder("a", "127.31.0.12/8")]))
    sid = await cri.run_sandbox(name="kept")
    await cri.restart()
    assert (await sandbox_status(cri, sid)).status.network.ip == "127.31.0.12"
    await stop(cri, sid)
    add, delete = cni.calls()
    assert (add["cmd"], delete["cmd"]) == ("ADD", "DEL")
    assert delete["prev"]["ips"] == [{"address": "127.31.0.12/8", "interface": 0}]  # from the cache on disk
    assert delete["env"]["CNI_NETNS"] == add["env"]["CNI_NETNS"]
    await remove(cri, sid)


@pytest.mark.skipif(not KUBEHARNESS_CNI.exists(), reason="kubeharness-cni is not installed")
async def test_kubeharness_cni_in_emulated_mode_serves_http_on_loopback_pod_ips(cri: CriHarness,
                                                                                cni: CniSetup) -> None:
    import urllib.request

    (cni.bin_dir / "kubeharness-cni").symlink_to(KUBEHARNESS_CNI)
    second = 10 + secrets.randbelow(200)
    subnet = f"127.{second}.{secrets.randbelow(250)}.0/24"
    cni.write("10-kh.conflist", cni.conflist([{
        "type": "kubeharness-cni", "mode": "emulated",
        "ipam": {"ranges": [[{"subnet": subnet}]], "dataDir": str(cni.ipam_dir)},
    }], name="khcni"))
    sid = await cri.run_sandbox(name="served")
    ip = (await sandbox_status(cri, sid)).status.network.ip
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(subnet)
    cfg = cri.sandbox_config(name="served")
    await cri.pull("kubeharness.test/khelper:1")
    cid = await cri.create(sid, cfg, args=["--http-port=8080"])
    await cri.start_container(cid)
    with contextlib.closing(await asyncio.to_thread(urllib.request.urlopen, f"http://{ip}:8080/healthz",
                                                    timeout=5)) as reply:
        assert (reply.status, reply.read()) == (200, b"ok\n")
    await remove(cri, sid)
