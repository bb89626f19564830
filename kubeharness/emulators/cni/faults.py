"""Faults for the plugin: the plan named in the network configuration, decided with state kept on disk.

``"faults": {"plan": "/path/plan.yaml", "seed": 1, "log": "/path/fired.jsonl"}`` in the configuration
applies the plan's ``where: cni`` rules to every command. Each invocation is a new process, so the
engine's per-rule counters, random generator states and load time are kept in ``faults.json`` in the
network's data directory, read and written under ``faults.lock``: the same plan, seed and sequence of
calls fire the same faults as one long-lived engine would. A changed plan file or seed starts afresh.

A call is described to the rules by what CNI gives: ``pod_name``, ``namespace`` and ``pod_uid`` from the
``K8S_POD_NAME``, ``K8S_POD_NAMESPACE`` and ``K8S_POD_UID`` of ``CNI_ARGS``; ``annotations`` from the
``io.kubernetes.cri.pod-annotations`` runtime config (containerd passes the pod's annotations when the
plugin declares that capability), so ``opt_in`` rules work; ``labels`` from ``args.labels`` of the
configuration; ``container_name`` is the ``CNI_CONTAINERID`` (the sandbox's id).

Only this module imports the fault engine (and with it YAML and gRPC): a configuration without a plan
costs nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
import zlib

from kubeharness.emulators.cni.errors import INVALID_CONFIG, IO_FAILURE, PluginError
from kubeharness.emulators.cni.invocation import Invocation
from kubeharness.emulators.cni.netconf import NetConf

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kubeharness.faults.engine import CallInfo, Decision

STATE = "faults.json"
LOCK = "faults.lock"


def _strings(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, str)}


def call_info(inv: Invocation, conf: NetConf | None) -> CallInfo:
    from kubeharness.faults.engine import CallInfo

    runtime = conf.runtime_config if conf is not None else {}
    args = conf.args if conf is not None else {}
    return CallInfo(
        pod_name=inv.args.get("K8S_POD_NAME"),
        namespace=inv.args.get("K8S_POD_NAMESPACE"),
        pod_uid=inv.args.get("K8S_POD_UID"),
        labels=_strings(args.get("labels")),
        annotations=_strings(runtime.get("io.kubernetes.cri.pod-annotations")),
        container_name=inv.container_id or None,
    )


def _write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


def decide(inv: Invocation, conf: NetConf) -> Decision | None:
    """What the plan does to this call, or None; the engine's state moves on either way."""
    spec = conf.faults
    plan_path = spec.get("plan")
    if not plan_path:
        return None
    seed, log = spec.get("seed", 0), spec.get("log")
    if not isinstance(plan_path, str) or isinstance(seed, bool) or not isinstance(seed, int):
        raise PluginError(INVALID_CONFIG, "faults needs plan (a path) and an integer seed")
    if log is not None and not isinstance(log, str):
        raise PluginError(INVALID_CONFIG, f"faults.log must be a path, got {log!r}")
    from kubeharness.clock import RealClock
    from kubeharness.faults.engine import FaultEngine
    from kubeharness.faults.plan import PlanError, load_plan

    try:
        with open(plan_path, encoding="utf-8") as file:
            text = file.read()
        plan = load_plan(text, source=plan_path)
    except OSError as err:
        raise PluginError(INVALID_CONFIG, f"cannot read the fault plan {plan_path}", str(err)) from None
    except PlanError as err:
        raise PluginError(INVALID_CONFIG, "invalid fault plan", err.message) from None
    fingerprint = f"{zlib.crc32(text.encode()):08x}/{seed}"
    engine = FaultEngine(plan, RealClock(), seed, log)
    try:
        os.makedirs(conf.network_dir, exist_ok=True)
        lock = os.open(os.path.join(conf.network_dir, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as err:
        raise PluginError(IO_FAILURE, f"cannot lock the fault state in {conf.network_dir}", str(err)) from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = os.path.join(conf.network_dir, STATE)
        try:
            with open(path, "rb") as file:
                saved = json.loads(file.read())
        except (OSError, ValueError):
            saved = {}
        if isinstance(saved, dict) and saved.get("fingerprint") == fingerprint:
            engine.restore_state(saved["engine"])
        decision = engine.decide("cni", inv.command, call_info(inv, conf))
        _write(path, json.dumps({"fingerprint": fingerprint, "engine": engine.export_state()}).encode())
    except OSError as err:
        raise PluginError(IO_FAILURE, "cannot keep the fault state", str(err)) from None
    finally:
        os.close(lock)
    return decision
