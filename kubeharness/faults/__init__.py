"""The fault engine shared by every emulator and the CRI proxy: fault plans and the engine that applies them.

A :class:`~kubeharness.faults.plan.FaultPlan` is a list of rules loaded from YAML or from Python dicts
and validated on load; a :class:`~kubeharness.faults.engine.FaultEngine` decides, call by call, which
rule fires and logs every fired fault. Carrying out the action (failing the RPC, sleeping, crashing)
is the caller's job.
"""

from __future__ import annotations

from kubeharness.faults.engine import CallInfo, Decision, FaultEngine, Fired
from kubeharness.faults.plan import (
    CNI_METHODS,
    CRI_METHODS,
    CSI_METHODS,
    OPT_IN_ANNOTATION,
    WHERES,
    Action,
    After,
    Always,
    CniError,
    CniHang,
    CniPartial,
    Crash,
    CsiAbnormal,
    CsiNotReady,
    Delay,
    Error,
    FaultPlan,
    First,
    Hang,
    Match,
    Nth,
    Partial,
    PlanError,
    Probability,
    Rule,
    Sequence,
    Step,
    Trigger,
    load_plan,
    load_plan_file,
    parse_sequence,
    plan_from_dict,
)

__all__ = [
    "CNI_METHODS",
    "CRI_METHODS",
    "CSI_METHODS",
    "OPT_IN_ANNOTATION",
    "WHERES",
    "Action",
    "After",
    "Always",
    "CallInfo",
    "CniError",
    "CniHang",
    "CniPartial",
    "Crash",
    "CsiAbnormal",
    "CsiNotReady",
    "Decision",
    "Delay",
    "Error",
    "FaultEngine",
    "FaultPlan",
    "Fired",
    "First",
    "Hang",
    "Match",
    "Nth",
    "Partial",
    "PlanError",
    "Probability",
    "Rule",
    "Sequence",
    "Step",
    "Trigger",
    "load_plan",
    "load_plan_file",
    "parse_sequence",
    "plan_from_dict",
]
