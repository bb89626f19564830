"""Fault plans in ``kubeharness-cni``: every CNI action, crash consistency of the store, determinism.

Each invocation is a new process, so these tests also show that the engine's counters and random
state survive from one invocation to the next (kept in the network's data directory).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_cni_plugin import PLUGIN, addresses, assert_error, invoke, netconf, state


def faulty(tmp_path: Path, rules: list[dict[str, Any]], seed: int = 0, name: str = "faultnet") -> dict[str, Any]:
    plan = tmp_path / f"{name}-plan.yaml"
    plan.write_text(yaml.safe_dump({"rules": rules}))
    log = str(tmp_path / f"{name}.jsonl")
    return netconf(tmp_path, name=name, faults={"plan": str(plan), "seed": seed, "log": log})


def fired(conf: dict[str, Any]) -> list[dict[str, Any]]:
    path = Path(conf["faults"]["log"])
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_cni_error_answers_before_any_work(tmp_path: Path) -> None:
    conf = faulty(tmp_path, [{"name": "busy", "where": "cni", "method": "ADD",
                              "action": {"cni_error": {"code": 11, "msg": "busy", "details": "later"}}}])
    doc = assert_error(invoke("ADD", conf, args="K8S_POD_NAME=web;K8S_POD_NAMESPACE=default"), 11)
    assert (doc["msg"], doc["details"]) == ("busy", "later")
    assert state(conf)["attachments"] == {}
    entry = fired(conf)[0]
    assert (entry["rule"], entry["where"], entry["method"], entry["pod"]) == ("busy", "cni", "ADD", "default/web")


def test_cni_partial_allocates_then_fails_and_del_frees(tmp_path: Path) -> None:
    conf = faulty(tmp_path, [{"name": "leak", "where": "cni", "method": "ADD", "when": {"first": 1},
                              "action": {"cni_partial": {"code": 5, "msg": "lost the reply"}}}])
    assert_error(invoke("ADD", conf), 5)
    assert list(state(conf)["attachments"]) == ["c1/eth0"]  # the address stays allocated
    assert invoke("DEL", conf).rc == 0
    assert addresses(invoke("ADD", conf)) == ["10.30.0.3/24"]  # allocation went on after the leaked .2


def test_delay_and_status_and_version_faults(tmp_path: Path) -> None:
    conf = faulty(tmp_path, [
        {"name": "slow", "where": "cni", "method": "DEL", "action": {"delay": {"seconds": 0.05, "when": "after"}}},
        {"name": "down", "where": "cni", "method": "STATUS", "action": {"cni_error": {"code": 50, "msg": "down"}}},
        {"name": "old", "where": "cni", "method": "VERSION", "action": {"cni_error": {"code": 1, "msg": "no"}}},
    ])
    assert invoke("DEL", conf).rc == 0
    assert_error(invoke("STATUS", conf, cid=None, ifname=None, netns=None), 50)
    assert_error(invoke("VERSION", conf, cid=None, ifname=None, netns=None), 1)
    assert [e["rule"] for e in fired(conf)] == ["slow", "down", "old"]
    assert fired(conf)[0]["delay_seconds"] == 0.05


def test_cni_hang_never_answers(tmp_path: Path) -> None:
    conf = faulty(tmp_path, [{"name": "stuck", "where": "cni", "method": "CHECK", "action": "cni_hang"}])
    with pytest.raises(subprocess.TimeoutExpired):
        invoke("CHECK", {**conf, "prevResult": {}}, timeout=1.5)  # subprocess.run kills the plugin it started


def test_crash_exit_leaves_no_answer_and_no_allocation(tmp_path: Path) -> None:
    conf = faulty(tmp_path, [{"name": "die", "where": "cni", "method": "ADD", "when": {"nth": 2},
                              "action": {"crash": {"how": "exit", "exit_code": 7}}}])
    first = addresses(invoke("ADD", conf, cid="a"))
    crashed = invoke("ADD", conf, cid="b")
    assert (crashed.rc, crashed.stdout) == (7, "")
    assert sorted(state(conf)["attachments"]) == ["a/eth0"]  # nth counted across processes: only call 2 died
    assert addresses(invoke("ADD", conf, cid="b")) != first


def test_sigkill_mid_write_keeps_the_store_consistent(tmp_path: Path) -> None:
    conf = faulty(tmp_path, [{"name": "kill", "where": "cni", "method": "*",
                              "when": {"sequence": "2*off -> 2*on -> off"}, "action": {"crash": {"how": "sigkill"}}}])
    invoke("ADD", conf, cid="a")
    invoke("ADD", conf, cid="b")
    killed_add = invoke("ADD", conf, cid="c")
    killed_del = invoke("DEL", conf, cid="a")
    assert (killed_add.rc, killed_add.stdout, killed_del.rc) == (-9, "", -9)
    directory = Path(conf["ipam"]["dataDir"]) / conf["name"]
    assert [p.name for p in directory.glob(".state.tmp.*")]  # the new state was written, never renamed
    assert sorted(state(conf)["attachments"]) == ["a/eth0", "b/eth0"]  # the old state, whole
    assert addresses(invoke("ADD", conf, cid="c")) == ["10.30.0.4/24"]
    assert not list(directory.glob(".state.tmp.*"))  # the next writer cleaned up
    assert invoke("DEL", conf, cid="a").rc == 0
    assert sorted(state(conf)["attachments"]) == ["b/eth0", "c/eth0"]


def test_pod_matching_and_opt_in_use_what_cni_passes(tmp_path: Path) -> None:
    conf = faulty(tmp_path, [
        {"name": "web-only", "where": "cni", "method": "ADD", "match": {"pod_name": "web-*", "namespace": "prod"},
         "action": {"cni_error": {"code": 11}}},
        {"name": "opted", "where": "cni", "method": "ADD", "opt_in": True, "action": {"cni_error": {"code": 100}}},
    ])
    assert_error(invoke("ADD", conf, cid="p1", args="IgnoreUnknown=1;K8S_POD_NAME=web-1;K8S_POD_NAMESPACE=prod"), 11)
    assert invoke("ADD", conf, cid="p2", args="K8S_POD_NAME=web-1;K8S_POD_NAMESPACE=dev").rc == 0
    annotated = {**conf, "capabilities": {"io.kubernetes.cri.pod-annotations": True},
                 "runtimeConfig": {"io.kubernetes.cri.pod-annotations": {"kubeharness.io/faults": "opted"}}}
    assert_error(invoke("ADD", annotated, cid="p3"), 100)


def test_same_plan_and_seed_fire_the_same_faults_across_invocations(tmp_path: Path) -> None:
    rules = [{"name": "coin", "where": "cni", "method": "ADD", "when": {"probability": 0.5},
              "action": {"cni_error": {"code": 11}}}]
    runs = []
    for run in ("one", "two"):
        conf = faulty(tmp_path, rules, seed=3, name=run)
        runs.append([invoke("ADD", conf, cid=f"p{i}").rc for i in range(8)])
        assert [e["call"] for e in fired(conf)] == [i + 1 for i, rc in enumerate(runs[-1]) if rc]
    assert runs[0] == runs[1]
    assert 0 < sum(1 for rc in runs[0] if rc) < 8


def test_an_invalid_plan_is_a_config_error(tmp_path: Path) -> None:
    conf = faulty(tmp_path, [{"name": "x", "where": "cni", "method": "ADD", "action": "hang"}])
    doc = assert_error(invoke("ADD", conf), 7)
    assert "cni_hang" in doc["details"]
    assert Path(PLUGIN).exists()
