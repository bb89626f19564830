"""The node suite's ``kubelet`` target: a binary started with kubelet's command line and a generated
KubeletConfiguration, here ``ci/kubelet-standin`` (our agent taking kubelet's flags); and the agent's
kubelet flags on their own (``--hostname-override``, ``--kubeconfig``, ``-v``, an unknown flag)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubeharness.agent.config.kubelet import ConfigError
from kubeharness.agent.main import check_kubeconfig
from kubeharness.conformance.node.agentnode import NODE_NAME
from kubeharness.conformance.node.kubeletnode import kubelet_node
from kubeharness.conformance.node.pods import khelper, phase, pod
from kubeharness.conformance.node.target import NodeUnavailable

STANDIN = Path(__file__).resolve().parents[1] / "ci" / "kubelet-standin"


def recording_binary(tmp_path: Path, then: str) -> Path:
    """A binary that writes its argv to ``argv.json`` and then execs ``then`` with them."""
    script = tmp_path / "kubelet"
    script.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                      f"open({str(tmp_path / 'argv.json')!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
                      f"os.execv({then!r}, [{then!r}] + sys.argv[1:])\n")
    script.chmod(0o755)
    return script


async def test_the_binary_gets_a_standalone_kubelets_command_line_and_runs_static_pods(tmp_path: Path) -> None:
    binary = recording_binary(tmp_path, str(STANDIN))
    node = await kubelet_node(tmp_path / "node", str(binary), {"syncFrequency": "3s"})
    try:
        assert node.name == "kubelet+emulator" and not node.virtual
        argv = json.loads((tmp_path / "argv.json").read_text())
        root = tmp_path / "node"
        assert argv == [f"--config={root / 'kubelet.yaml'}", f"--root-dir={root / 'kubelet'}",
                        f"--hostname-override={NODE_NAME}", "-v=2"]
        config = yaml.safe_load((root / "kubelet.yaml").read_text())
        assert config["kind"] == "KubeletConfiguration" and config["syncFrequency"] == "3s"
        assert config["staticPodPath"] == str(root / "manifests") and "kubeconfig" not in config
        assert config["authorization"] == {"mode": "AlwaysAllow"}
        node.write("p", pod("p", khelper("app")))
        name = node.pod_name("p")
        await node.until(lambda p: phase(p, name) == "Running", 60, "running")
        assert await node.running(name) == ["app"]
        assert await node.events() is not None  # the stand-in serves /events; a kubelet's 404 gives None
        await node.drain(60)
    finally:
        await node.close()
    assert node.process.returncode is not None  # stopped, by SIGTERM


async def test_a_binary_that_cannot_start_or_exits_at_once_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NodeUnavailable, match=r"--kubelet-binary .*/nonexistent: cannot start it"):
        await kubelet_node(tmp_path / "a", str(tmp_path / "nonexistent"), {})
    failing = tmp_path / "failing"
    failing.write_text("#!/bin/sh\necho 'unknown flag: --hostname-override' >&2\nexit 1\n")
    failing.chmod(0o755)
    with pytest.raises(NodeUnavailable, match=r"(?s)exited with 1.*unknown flag: --hostname-override"):
        await kubelet_node(tmp_path / "b", str(failing), {})


def kubeconfig(tmp_path: Path, doc: object) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


GOOD = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:6443"}}], "users": []}


def test_a_kubeconfig_is_checked_for_its_current_contexts_server(tmp_path: Path) -> None:
    assert check_kubeconfig(kubeconfig(tmp_path, GOOD)) == "https://127.0.0.1:6443"
    with pytest.raises(ConfigError, match="no current-context"):
        check_kubeconfig(kubeconfig(tmp_path, {**GOOD, "current-context": ""}))
    with pytest.raises(ConfigError, match="clusters: no entry named 'k'"):
        check_kubeconfig(kubeconfig(tmp_path, {**GOOD, "clusters": []}))
    with pytest.raises(ConfigError, match="not a kubeconfig"):
        check_kubeconfig(kubeconfig(tmp_path, {"kind": "Pod"}))
    with pytest.raises(ConfigError, match="cannot read it"):
        check_kubeconfig(str(tmp_path / "missing"))


def agent(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(STANDIN), *args], capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, "GRPC_VERBOSITY": "ERROR"})


def test_the_agent_refuses_a_kubelet_flag_it_does_not_support_and_a_bad_kubeconfig(tmp_path: Path) -> None:
    config = tmp_path / "kubelet.yaml"
    config.write_text("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n")
    unknown = agent(f"--config={config}", "--register-with-taints=a=b:NoSchedule")
    assert unknown.returncode == 2 and "unrecognized arguments: --register-with-taints" in unknown.stderr
    bad = agent(f"--config={config}", f"--kubeconfig={tmp_path / 'missing'}", "--v=4")
    assert bad.returncode == 2 and "--kubeconfig" in bad.stderr and "cannot read it" in bad.stderr
    assert "Traceback" not in bad.stderr


async def test_the_agent_takes_the_hostname_override_and_a_kubeconfig_and_runs_standalone(tmp_path: Path) -> None:
    binary = tmp_path / "kubelet"
    path = kubeconfig(tmp_path, GOOD)
    binary.write_text(f"#!/bin/sh\nexec {STANDIN} --kubeconfig {path} \"$@\" --hostname-override=Node-A -v 4\n")
    binary.chmod(0o755)
    node = await kubelet_node(tmp_path / "node", str(binary), {})
    try:
        node.node_name = "node-a"  # trimmed and lower-cased, as kubelet does
        node.write("p", pod("p", khelper("app")))
        await node.until(lambda p: phase(p, "p-node-a") == "Running", 60, "running under the overridden name")
        log = (tmp_path / "node" / "kubelet.log").read_text()
        assert "no API-server mode yet; running standalone" in log and "https://127.0.0.1:6443" in log
        assert " DEBUG " in log  # -v 4
        await node.drain(60)
    finally:
        await node.close()
