"""Crash torture (issue 18): the CRI emulator, the CSI plugin, the CNI plugin's store and the agent SIGKILLed
at seeded random moments dozens of times, restarted on the same state each time, and checked afterwards:
everything acknowledged is there, nothing removed came back, nothing is there twice, nothing leaked.

``KUBEHARNESS_TORTURE_KILLS`` sets the kills per run (default 30); each run prints and records
(``record_property``) how many kills it survived.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from kubeharness.emulators.cni.errors import ALREADY_ATTACHED
from kubeharness.testing.emulator import PROBE_OPTIONS, CriEmulator
from kubeharness.testing.torture import Torture, TortureReport, duplicates
from kubeharness.testing.torture_cri import CriWorkload
from kubeharness.testing.torture_csi import CsiWorkload
from kubeharness.wire.cri import api_pb2 as cri
from kubeharness.wire.cri import api_pb2_grpc as cri_grpc
from kubeharness.wire.csi import csi_pb2 as csi
from kubeharness.wire.csi import csi_pb2_grpc as csi_grpc

KILLS = int(os.environ.get("KUBEHARNESS_TORTURE_KILLS", "30"))
SEED = int(os.environ.get("KUBEHARNESS_TORTURE_SEED", "18"))
WORKERS = 8
COMPACT_LINES = 64  # the emulators compact their journals often, so kills land in compactions too
DEADLINE = 60.0  # seconds a restarted daemon may take to answer on a loaded machine
NODE = "torture-node"



def sigkill(process: subprocess.Popen[bytes]) -> None:
    """Kill ``process`` (ours, by its PID) at once and collect it."""
    os.kill(process.pid, signal.SIGKILL)
    process.wait(DEADLINE)


def terminate(process: subprocess.Popen[bytes] | None) -> None:
    """Stop ``process`` (ours) with SIGTERM if it still runs, and collect it."""
    if process is not None and process.poll() is None:
        process.terminate()
        process.wait(DEADLINE)

class CsiDaemon:
    """``kubeharness csi serve`` as a process to kill and start again on the same state and socket."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket_dir = Path(tempfile.mkdtemp(prefix="kh-torture-"))  # short enough for a unix socket
        self.endpoint = f"unix://{self.socket_dir / 'csi.sock'}"
        self.kubelet = root / "kubelet"
        self.config = root / "csi.yaml"
        self.config.write_text(f"node_id: {NODE}\nroots: [{str(self.kubelet)!r}]\n"
                               f"journal_compact_lines: {COMPACT_LINES}\n")
        self.output = root / "csi.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.output.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kubeharness.cli", "csi", "serve", "--endpoint", self.endpoint,
                 "--state-dir", str(self.root / "state"), "--config", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        deadline = time.monotonic() + DEADLINE
        with grpc.insecure_channel(self.endpoint, options=PROBE_OPTIONS) as channel:
            identity = csi_grpc.IdentityStub(channel)
            while True:
                assert self.process.poll() is None, self.output.read_text(errors="replace")
                try:
                    if identity.Probe(csi.ProbeRequest(), timeout=2.0).ready.value:
                        return
                except grpc.RpcError:
                    pass
                assert time.monotonic() < deadline, f"the CSI plugin did not answer:\n{self.output.read_text()}"
                time.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        sigkill(self.process)

    def stop(self) -> None:
        terminate(self.process)
        for leftover in self.socket_dir.iterdir():
            leftover.unlink()
        self.socket_dir.rmdir()


def survived(record_property: Callable[[str, object], None], what: str, report: TortureReport,
             at_least: bool = False) -> None:
    print(f"\ntorture {what}: {report.summary()}")
    record_property(f"torture_{what}_kills", report.kills)
    record_property(f"torture_{what}_acknowledged", report.acknowledged)
    assert report.problems == [], "\n".join(report.problems)
    assert report.kills >= KILLS if at_least else report.kills == KILLS


@pytest.mark.timeout(900)
@pytest.mark.parametrize("network", ["pool", "cni"])
async def test_cri_emulator_keeps_every_acknowledged_change_across_kills(
        tmp_path: Path, record_property: Callable[[str, object], None], network: str) -> None:
    """With addresses from the emulator's pool, and from the CNI plugin (whose store must end empty: every
    address of a removed sandbox given back, none of a RunPodSandbox that a kill cut kept)."""
    if network == "cni":
        emulator, ipam = cni_emulator(tmp_path)
    else:
        emulator, ipam = CriEmulator(tmp_path, start_timeout=DEADLINE, config=cri_config(tmp_path)), None
    async with emulator:
        torture = Torture(emulator.kill, emulator.start, kills=KILLS, seed=SEED)
        workload = CriWorkload(torture, emulator.endpoint)

        async def check() -> list[str]:
            problems = await workload.check()
            left = attachments(ipam) if ipam is not None else set()
            return problems + [f"the CNI store still holds {len(left)} addresses after everything was removed"
                               for _ in [left] if left]

        try:
            await workload.prepare()
            report = await torture.run([workload.worker(i) for i in range(WORKERS)], check)
        finally:
            await workload.close()
    survived(record_property, f"cri_{network}", report)


@pytest.mark.timeout(900)
async def test_csi_plugin_keeps_every_acknowledged_change_across_kills(
        tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    daemon = CsiDaemon(tmp_path)
    daemon.start()
    try:
        torture = Torture(daemon.kill, daemon.start, kills=KILLS, seed=SEED)
        workload = CsiWorkload(torture, daemon.endpoint, NODE, daemon.kubelet)
        try:
            report = await torture.run([workload.worker(i) for i in range(WORKERS)], workload.check)
        finally:
            await workload.close()
    finally:
        daemon.stop()
    survived(record_property, "csi", report)


CNI_PLUGIN = str(Path(sys.executable).with_name("kubeharness-cni"))


@dataclass
class CniLedger:
    """What the plugin acknowledged: attachments ADDed (with their addresses) and not DELeted since, and the
    keys whose last call was cut by a kill and left in doubt."""

    added: dict[str, list[str]] = field(default_factory=dict)
    in_doubt: set[str] = field(default_factory=set)
    report: TortureReport = field(default_factory=TortureReport)
    lock: threading.Lock = field(default_factory=threading.Lock)


class CniTorture:
    """Concurrent ADD and DEL invocations of the real plugin on one store; a seeded choice of which
    invocations are SIGKILLed, and after how long (up to a little more than a typical call takes)."""

    def __init__(self, root: Path, kills: int, seed: int) -> None:
        self.conf = {"cniVersion": "1.1.0", "name": "torture", "type": "kubeharness-cni",
                     "ipam": {"ranges": [[{"subnet": "10.77.0.0/16"}]], "dataDir": str(root / "ipam")}}
        self.kills = kills
        self.seed = seed
        self.ledger = CniLedger()
        self.durations: list[float] = []  # of the calls no kill cut

    @property
    def store(self) -> Path:
        return Path(self.conf["ipam"]["dataDir"]) / "torture" / "state.json"  # type: ignore[index]

    def invoke(self, command: str, cid: str, kill_after: float | None = None,
               conf: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        env = {"PATH": os.environ.get("PATH", ""), "CNI_COMMAND": command, "CNI_CONTAINERID": cid,
               "CNI_IFNAME": "eth0", "CNI_NETNS": "/var/run/netns/emulated", "CNI_PATH": "/usr/lib/cni"}
        process = subprocess.Popen([CNI_PLUGIN], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, env=env)
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(json.dumps(conf or self.conf).encode())
        process.stdin.close()
        if kill_after is not None:
            try:
                process.wait(kill_after)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
        out = process.stdout.read()
        process.stdout.close()
        rc = process.wait(DEADLINE)
        return rc, json.loads(out) if out.strip() else {}

    def typical(self) -> float:
        """How long an uncut call took lately, under this load: the kills are spread around its end."""
        with self.ledger.lock:
            recent = self.durations[-20:]
        return statistics.median(recent) if recent else 0.1

    def worker(self, index: int) -> None:
        rng = random.Random(f"{self.seed}/cni/{index}")
        n = 0
        while self.ledger.report.kills < self.kills:
            cid = f"w{index}-{n}"
            n += 1
            with self.ledger.lock:
                self.ledger.report.lifecycles += 1
            self._call("ADD", cid, rng)
            if rng.random() < 0.7:
                self._call("DEL", cid, rng)

    def _call(self, command: str, cid: str, rng: random.Random) -> None:
        ledger = self.ledger
        while True:
            kill_after = rng.uniform(0.5, 1.2) * self.typical() if rng.random() < 0.5 else None
            began = time.monotonic()
            rc, doc = self.invoke(command, cid, kill_after)
            with ledger.lock:
                if rc != -signal.SIGKILL:
                    self.durations.append(time.monotonic() - began)
                if rc == -signal.SIGKILL:
                    ledger.report.kills += 1
                    ledger.report.in_doubt += 1
                    ledger.in_doubt.add(cid)
                    if rng.random() < 0.3:  # leave it in doubt: the store may hold it or not
                        ledger.added.pop(cid, None)
                        return
                    continue
                ledger.in_doubt.discard(cid)
                if command == "ADD" and rc != 0:
                    assert doc.get("code") == ALREADY_ATTACHED, doc  # a retried ADD that had taken effect
                    ledger.report.in_doubt_done += 1
                    ledger.added[cid] = []  # its addresses are in the store
                    return
                assert rc == 0, (command, cid, rc, doc)
                ledger.report.acknowledged += 1
                if command == "ADD":
                    ledger.added[cid] = [ip["address"] for ip in doc["ips"]]
                else:
                    ledger.added.pop(cid, None)
                return

    def check(self) -> list[str]:
        """The store against the ledger; then DEL half of what is there, GC the rest, and expect it empty."""
        problems: list[str] = []
        state = json.loads(self.store.read_text())  # a torn store fails here
        held = {key.split("/")[0]: att["ips"] for key, att in state["attachments"].items()}
        for cid, ips in sorted(self.ledger.added.items()):
            if cid not in held:
                problems.append(f"{cid}: acknowledged ADD is not in the store")
            elif ips and held[cid] != ips:
                problems.append(f"{cid}: the store holds {held[cid]}, ADD answered {ips}")
        for cid in sorted(set(held) - set(self.ledger.added) - self.ledger.in_doubt):
            problems.append(f"{cid}: in the store, but DELeted (or never ADDed)")
        self.ledger.report.in_doubt_done += len(set(held) & self.ledger.in_doubt)
        addresses = [ip for ips in held.values() for ip in ips]
        problems += [f"the address {ip} is held twice" for ip in duplicates(addresses)]
        for cid in sorted(held)[::2]:
            if self.invoke("DEL", cid)[0] != 0:
                problems.append(f"{cid}: DEL failed")
        gc = {**self.conf, "cni.dev/valid-attachments": []}
        if self.invoke("GC", "", conf=gc)[0] != 0:
            problems.append("GC failed")
        left = json.loads(self.store.read_text())["attachments"]
        if left:
            problems.append(f"after DEL and GC the store still holds {sorted(left)}")
        return problems


@pytest.mark.timeout(900)
def test_cni_store_keeps_every_acknowledged_change_across_kills(
        tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    torture = CniTorture(tmp_path, KILLS, SEED)
    with ThreadPoolExecutor(WORKERS) as pool:
        for done in [pool.submit(torture.worker, i) for i in range(WORKERS)]:
            done.result()
    report = torture.ledger.report
    report.problems = torture.check()
    print(f"\ntorture cni: kills spread around the end of a call, lately {torture.typical() * 1000:.0f} ms")
    survived(record_property, "cni", report, at_least=True)


AGENT_NODE = "torture-node"
PODS = ("web-0", "web-1", "web-2", "web-3", "crash-0", "crash-1", "web-4", "crash-2")  # crash-*: exit 3 after 1 s


def manifest(name: str) -> dict[str, Any]:
    flags = ["--exit-after=1s", "--exit-code=3"] if name.startswith("crash") else []
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"restartPolicy": "Always", "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "app", "image": "kubeharness.test/khelper:1",
                                     "command": ["/khelper", *flags]}]}}


def cni_emulator(root: Path) -> tuple[CriEmulator, Path]:
    """A CRI emulator process whose pod networks come from the kubeharness-cni plugin, and its IPAM directory."""
    net = root / "net.d"
    net.mkdir()
    bin_dir = root / "cni-bin"
    bin_dir.mkdir()
    (bin_dir / "kubeharness-cni").symlink_to(CNI_PLUGIN)
    ipam = {"ranges": [[{"subnet": "10.78.0.0/16"}]], "dataDir": str(root / "ipam")}
    (net / "10-torture.conflist").write_text(json.dumps({"cniVersion": "1.1.0", "name": "torture",
                                                         "plugins": [{"type": "kubeharness-cni", "ipam": ipam}]}))
    emulator = CriEmulator(root / "cri", start_timeout=DEADLINE, config=cri_config(root),
                           extra_args=["--cni-conf-dir", str(net), "--cni-bin-dir", str(bin_dir)])
    return emulator, root / "ipam"


def cri_config(root: Path) -> Path:
    path = root / "cri.yaml"
    path.write_text(f"journal_compact_lines: {COMPACT_LINES}\n")
    return path


def attachments(ipam: Path) -> set[str]:
    """The container ids the CNI store holds addresses for."""
    path = ipam / "torture" / "state.json"
    state = json.loads(path.read_text()) if path.exists() else {"attachments": {}}
    return {att["containerID"] for att in state["attachments"].values()}


class AgentNode:
    """A CRI emulator process whose pod networks come from the kubeharness-cni plugin (one store to check
    for leaked addresses), and ``kubeharness agent`` processes on it, reading static pods from a directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.manifests = root / "manifests"
        self.manifests.mkdir()
        self.cri, self.ipam = cni_emulator(root)
        self.config = root / "kubelet.yaml"
        self.config.write_text(json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "containerRuntimeEndpoint": self.cri.endpoint, "staticPodPath": str(self.manifests),
            "fileCheckFrequency": "1s", "syncFrequency": "2s", "healthzPort": 0, "readOnlyPort": 0,
            "podLogsDir": str(root / "pods"), "clusterDomain": "cluster.local"}))
        self.output = root / "agent.log"
        self.agent: subprocess.Popen[bytes] | None = None

    def write(self, name: str) -> None:
        tmp = self.manifests / f".{name}.tmp"
        tmp.write_text(json.dumps(manifest(name)))
        tmp.rename(self.manifests / f"{name}.json")

    def desired(self) -> set[str]:
        return {p.stem for p in self.manifests.glob("*.json")}

    def start_agent(self) -> None:
        with self.output.open("ab") as out:
            self.agent = subprocess.Popen(
                [sys.executable, "-m", "kubeharness.cli", "agent", "--config", str(self.config),
                 "--node-name", AGENT_NODE, "--root-dir", str(self.root / "kubelet")],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out)

    def kill_agent(self) -> None:
        assert self.agent is not None
        sigkill(self.agent)

    def stop_agent(self) -> None:
        terminate(self.agent)

    def attachments(self) -> set[str]:
        return attachments(self.ipam)

    def converged(self) -> list[str]:
        """What is still wrong: the CRI's view against the manifests, and the CNI store against the sandboxes."""
        with grpc.insecure_channel(self.cri.endpoint, options=PROBE_OPTIONS) as channel:
            stub = cri_grpc.RuntimeServiceStub(channel)
            sandboxes = list(stub.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=DEADLINE).items)
            containers = list(stub.ListContainers(cri.ListContainersRequest(), timeout=DEADLINE).containers)
            ips = {sb.id: stub.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=sb.id),
                                                timeout=DEADLINE).status.network.ip
                   for sb in sandboxes if sb.state == cri.SANDBOX_READY}
        wrong: list[str] = []
        desired = {f"{name}-{AGENT_NODE}" for name in self.desired()}
        ready = [sb.metadata.name for sb in sandboxes if sb.state == cri.SANDBOX_READY]
        for name in sorted(desired):
            if ready.count(name) != 1:
                wrong.append(f"{name}: {ready.count(name)} ready sandboxes")
        wrong += [f"{sb.metadata.name}: a sandbox of a removed pod ({cri.PodSandboxState.Name(sb.state)})"
                  for sb in sandboxes if sb.metadata.name not in desired]
        pod_of = {sb.id: sb.metadata.name for sb in sandboxes}
        wrong += [f"container {c.metadata.name} of a removed pod" for c in containers
                  if pod_of.get(c.pod_sandbox_id) not in desired]
        wrong += [f"the address {ip} is held twice" for ip in duplicates(list(ips.values()))]
        attached = self.attachments()
        wrong += [f"the CNI store holds an address for {cid[:12]}, which is no ready sandbox"
                  for cid in sorted(attached - set(ips))]
        wrong += [f"ready sandbox {sid[:12]} has no address in the CNI store" for sid in sorted(set(ips) - attached)]
        return wrong


def kill_agent_now_and_then(node: AgentNode, rng: random.Random, kills: dict[str, int]) -> None:
    """Kill the agent dozens of times at seeded moments, restart it at once; change the desired pods now and
    then (one more, or one fewer)."""
    while kills["agent"] < KILLS:
        if rng.random() < 0.3:
            absent = [p for p in PODS if p not in node.desired()]
            if absent and (rng.random() < 0.5 or len(node.desired()) <= 2):
                node.write(rng.choice(absent))
            else:
                (node.manifests / f"{rng.choice(sorted(node.desired()))}.json").unlink()
        time.sleep(rng.uniform(0.3, 2.0))
        node.kill_agent()
        node.start_agent()
        kills["agent"] += 1


def kill_runtime_now_and_then(node: AgentNode, rng: random.Random, kills: dict[str, int]) -> None:
    """Kill the CRI emulator under the agent dozens of times at seeded moments, restart it each time."""
    while kills["cri"] < KILLS:
        time.sleep(rng.uniform(0.2, 1.2))
        node.cri.kill()
        node.cri.start()
        kills["cri"] += 1


@pytest.mark.timeout(900)
def test_agent_converges_after_its_runtime_and_itself_are_killed_dozens_of_times(
        tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    node = AgentNode(tmp_path)
    kills = {"agent": 0, "cri": 0}
    for name in PODS[:5]:
        node.write(name)
    node.cri.start()
    try:
        node.start_agent()
        with ThreadPoolExecutor(2) as pool:
            agent_killer = pool.submit(kill_agent_now_and_then, node, random.Random(f"{SEED}/agent"), kills)
            runtime_killer = pool.submit(kill_runtime_now_and_then, node, random.Random(f"{SEED}/cri"), kills)
            runtime_killer.result()
            agent_killer.result()
        deadline = time.monotonic() + 180
        while (wrong := node.converged()):
            assert time.monotonic() < deadline, "the agent did not converge:\n" + "\n".join(wrong)
            time.sleep(0.5)
    finally:
        node.stop_agent()
        node.cri.stop()
    print(f"\ntorture agent: survived {kills['agent']} agent kills and {kills['cri']} kills of its runtime; "
          f"converged to {len(node.desired())} pods")
    record_property("torture_agent_kills", kills["agent"])
    record_property("torture_agent_runtime_kills", kills["cri"])
