"""pytest plugin of the node conformance suite: ``--node-target`` and ``--runtime``, and the ``node`` fixture.

``--node-target=agent`` (the default) runs our agent in the suite's process; ``--runtime=emulator`` (the
default) puts it beside a CRI emulator on a virtual clock, a node per spec, so ``pytest -n auto`` is fine;
``--runtime=containerd`` puts it on the real clock on the containerd at ``--cri-endpoint``, or, without
one, on a containerd the suite brings up itself (``kubeharness env up``, taken down at the end). Nodes on
containerd share it and must run one at a time: the plugin refuses ``-n`` there.

``--node-target=kubelet --kubelet-binary=PATH`` starts that binary per spec as a standalone kubelet
(:mod:`kubeletnode`), on a CRI emulator of its own (real clock) or on the containerd above.

``--node-target=kind [--kind-cluster=NAME] [--kind-node=CONTAINER] [--docker-host=URL]`` drives a kind
cluster's node through its Docker engine (:mod:`kindnode`), on the node's own kubelet and containerd
(``--runtime`` does not apply); specs run one at a time, as they share the node, and those that need
KubeletConfiguration fields are skipped (the node runs the cluster's configuration).

A spec asks for KubeletConfiguration fields with ``@pytest.mark.node_config(**fields)``; one that follows
minutes of real time (kubelet's 5-minute image GC period, say) says so with
``@pytest.mark.node_long("about 8 minutes")`` and runs on real-clock nodes only with ``--node-long``. Every spec's
target name and the timeline of its containers' states go into the conformance observations
(``--observations FILE``), next to what the spec itself recorded with ``observe``. At the end the
terminal summary prints the time compression: node seconds each spec covered per wall second it took, and
for the whole session (the benchmark of issue 14: at least 300x on agent+emulator).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from kubeharness.conformance.node.agentnode import agent_on_emulator, agent_on_endpoint, free_port
from kubeharness.conformance.node.kindnode import kind_node
from kubeharness.conformance.node.kubeletnode import kubelet_node
from kubeharness.conformance.node.target import NodeTarget

TARGETS = ("agent", "kubelet", "kind")
RUNTIMES = ("emulator", "containerd")
DRAIN_S = {True: 300.0, False: 120.0}  # virtual, real: node seconds for the pods to go at the end


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kubeharness node conformance")
    group.addoption("--node-target", default="agent", choices=TARGETS, help="the node under test (default: agent)")
    group.addoption("--runtime", default="emulator", choices=RUNTIMES,
                    help="the node's container runtime (default: emulator)")
    group.addoption("--kubelet-binary", default="", metavar="PATH",
                    help="--node-target=kubelet: the kubelet binary (or a stand-in taking kubelet's flags)")
    group.addoption("--node-long", action="store_true",
                    help="also run the specs that take many minutes of real time on real-clock nodes")
    group.addoption("--kind-cluster", default="kind", metavar="NAME",
                    help="--node-target=kind: the cluster (default: kind); its node is NAME-control-plane")
    group.addoption("--kind-node", default="", metavar="CONTAINER",
                    help="--node-target=kind: the node's container, if not the cluster's control plane")
    group.addoption("--docker-host", default="", metavar="URL",
                    help="--node-target=kind: the Docker engine (default: $DOCKER_HOST or its usual socket)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "node_config(**fields): KubeletConfiguration fields for this spec's node")
    config.addinivalue_line("markers", "node_long(duration): the spec takes that long on a real clock: skipped "
                            "there without --node-long")


def _env(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kubeharness.cli", "env", *args], capture_output=True, text=True,
                          timeout=600, check=False)


@pytest.fixture(scope="session")
def containerd_endpoint(request: pytest.FixtureRequest) -> Iterator[str]:
    """The containerd of ``--cri-endpoint``, or one brought up for the session."""
    if hasattr(request.config, "workerinput"):
        raise pytest.UsageError("--runtime=containerd: the nodes share containerd and run one at a time; "
                                "run without -n")
    given = str(request.config.getoption("--cri-endpoint", default="") or "")
    if given:
        yield given
        return
    run_dir = Path(tempfile.mkdtemp(prefix="kubeharness-node-env-"))
    up = _env("up", "--run-dir", str(run_dir), "--registry-port", str(free_port()))
    if up.returncode != 0:
        _env("down", "--run-dir", str(run_dir))
        raise pytest.UsageError(f"kubeharness env up failed: {up.stderr.strip()[-2000:]}")
    try:
        yield up.stdout.strip()
    finally:
        _env("down", "--run-dir", str(run_dir))


@pytest.fixture
async def node(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[NodeTarget]:
    """The node under test, configured for this spec; its pods are removed and it is stopped afterwards."""
    long_marker = request.node.get_closest_marker("node_long")
    kind, runtime = request.config.getoption("--node-target"), request.config.getoption("--runtime")
    virtual = (kind, runtime) == ("agent", "emulator")  # the one node on a virtual clock
    if long_marker and not virtual and not request.config.getoption("--node-long"):
        pytest.skip(f"takes {long_marker.args[0]} of real time: run with --node-long")
    marker = request.node.get_closest_marker("node_config")
    extra: dict[str, Any] = dict(marker.kwargs) if marker else {}
    target = await _start(request, tmp_path, extra)
    request.node.user_properties.append(("target", target.name))
    wall = time.monotonic()
    try:
        yield target
    finally:
        # the spec's own time, before the clean-up: node seconds it covered, wall seconds it took
        request.node.user_properties.append(("node_time", [target.elapsed_s(), time.monotonic() - wall]))
        request.node.user_properties.append(("timeline", [s.to_json() for s in target.timeline]))
    try:
        await target.drain(DRAIN_S[target.virtual])
    finally:
        await target.close()


async def _start(request: pytest.FixtureRequest, root: Path, extra: dict[str, Any]) -> NodeTarget:
    config = request.config
    kind, runtime = config.getoption("--node-target"), config.getoption("--runtime")
    endpoint = str(request.getfixturevalue("containerd_endpoint")) if runtime == "containerd" and kind != "kind" \
        else None
    if kind == "kind":
        if hasattr(config, "workerinput"):
            raise pytest.UsageError("--node-target=kind: the specs share the node, one at a time; run without -n")
        if extra:
            pytest.skip(f"needs KubeletConfiguration {', '.join(sorted(extra))}: a kind node runs the cluster's")
        container = str(config.getoption("--kind-node")) or f"{config.getoption('--kind-cluster')}-control-plane"
        return await kind_node(container, str(config.getoption("--docker-host")) or None)
    if kind == "agent":
        return await (agent_on_endpoint(root, endpoint, extra) if endpoint else agent_on_emulator(root, extra))
    binary = str(config.getoption("--kubelet-binary"))
    if not binary:
        raise pytest.UsageError("--node-target=kubelet needs --kubelet-binary=PATH")
    return await kubelet_node(root, binary, extra, endpoint)


_TIMES: dict[str, tuple[str, float, float]] = {}  # spec: (target, node seconds, wall seconds)
_SESSION: list[float] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    _SESSION.append(time.monotonic())


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "teardown":
        return
    props: dict[str, Any] = dict(report.user_properties)
    if "node_time" in props and report.nodeid not in _TIMES:
        node_s, wall_s = props["node_time"]
        _TIMES[report.nodeid] = (str(props.get("target", "")), float(node_s), float(wall_s))


def compression_lines(times: dict[str, tuple[str, float, float]], session_wall_s: float) -> list[str]:
    """The time-compression table: node seconds per wall second, per spec and for the session."""
    lines = [f"{'spec':<90} {'node s':>8} {'wall s':>7} {'x':>7}"]
    for nodeid, (_, node_s, wall_s) in sorted(times.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"{nodeid.split('/')[-1][:90]:<90} {node_s:8.1f} {wall_s:7.2f} {node_s / max(wall_s, 1e-6):7.0f}")
    total = sum(t[1] for t in times.values())
    targets = ", ".join(sorted({t[0] for t in times.values()}))
    lines.append(f"{targets}: {len(times)} specs covered {total:.0f} node seconds in {session_wall_s:.1f} wall seconds "
                 f"(the session): {total / max(session_wall_s, 1e-6):.0f}x; the specs' own wall time summed "
                 f"{sum(t[2] for t in times.values()):.1f} s")
    return lines


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if not _TIMES or hasattr(config, "workerinput"):
        return
    terminalreporter.section("node time")
    for line in compression_lines(_TIMES, time.monotonic() - _SESSION[0]):
        terminalreporter.write_line(line)
