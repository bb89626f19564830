"""The fault engine: decides, call by call, which rule of a fault plan fires, and logs every fired fault.

An emulator (or the CRI proxy) asks ``engine.decide(where, method, CallInfo(...))`` on each call and
gets a :class:`Decision` (the rule and the action to carry out) or ``None``. The engine only decides and
logs; sleeping, failing the RPC or crashing is the caller's job.

Determinism: every rule has its own counter of matching calls and its own ``random.Random`` seeded
from the engine's seed and the rule's name, so the same plan, seed and sequence of calls (and clock
readings, for ``after``) give the same decisions and the same log, whatever else the plan contains.

Every rule sees every call it matches, and its counter counts them, even when an earlier rule fires on
the same call: the first rule in plan order that fires wins, and the others that would have fired are
recorded as ``shadowed`` in the log entry.

Each fired fault is kept in memory (:meth:`FaultEngine.fired`) and, given a ``log_path``, appended to
it as one JSON line: ``time_ns`` (from the clock), ``rule``, ``where``, ``method``, ``call`` (the
rule's count of matching calls), ``matched`` (the fields the rule matched on, with the call's values),
``action`` (``{kind: fields}``), ``delay_seconds`` for delays (jitter applied), ``shadowed`` and
``pod`` (``namespace/name``, when the call names a pod).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from kubeharness.clock import Clock, seconds_to_ns
from kubeharness.faults.plan import (
    ANY_METHOD,
    MATCH_FIELDS,
    OPT_IN_ANNOTATION,
    WHERES,
    Action,
    After,
    Always,
    Delay,
    FaultPlan,
    First,
    Match,
    Nth,
    Probability,
    Rule,
    Sequence,
)


@dataclass(frozen=True)
class CallInfo:
    """What a call carries, as far as the caller knows it (for a container: also its sandbox's pod)."""

    pod_name: str | None = None
    namespace: str | None = None
    pod_uid: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    container_name: str | None = None
    image: str | None = None
    volume_id: str | None = None

    def opted_in(self) -> frozenset[str]:
        """The rule names listed in the pod's ``kubeharness.io/faults`` annotation."""
        listing = self.annotations.get(OPT_IN_ANNOTATION, "")
        return frozenset(name.strip() for name in listing.split(",") if name.strip())


@dataclass(frozen=True)
class Decision:
    """A rule fired: carry out ``action``. ``delay_seconds`` is the delay to use (jitter applied)."""

    rule: str
    where: str
    method: str
    action: Action
    call: int
    delay_seconds: float | None = None


@dataclass(frozen=True)
class Fired:
    """One entry of the fired-fault log."""

    time_ns: int
    rule: str
    where: str
    method: str
    call: int
    matched: Mapping[str, object]
    action: Mapping[str, object]
    delay_seconds: float | None = None
    shadowed: tuple[str, ...] = ()
    pod: str | None = None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "time_ns": self.time_ns,
            "rule": self.rule,
            "where": self.where,
            "method": self.method,
            "call": self.call,
            "matched": dict(self.matched),
            "action": dict(self.action),
        }
        if self.delay_seconds is not None:
            out["delay_seconds"] = self.delay_seconds
        if self.shadowed:
            out["shadowed"] = list(self.shadowed)
        if self.pod is not None:
            out["pod"] = self.pod
        return out

    def to_json(self) -> str:
        """The entry as one line of JSON (no newline), keys sorted, so equal entries give equal lines."""
        return json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))


class _RuleState:
    __slots__ = ("calls", "rng", "rule")

    def __init__(self, rule: Rule, seed: int) -> None:
        self.rule = rule
        self.calls = 0
        self.rng = random.Random(f"{seed}/{rule.name}")


def _glob(pattern: str, value: str | None) -> bool:
    return value is not None and fnmatchcase(value, pattern)


def _matched(rule: Rule, call: CallInfo, opted: frozenset[str]) -> dict[str, object] | None:
    """The fields ``rule`` matched on with the call's values, or ``None`` if the call does not match."""
    match: Match = rule.match
    if rule.opt_in and rule.name not in opted:
        return None
    out: dict[str, object] = {}
    for name in MATCH_FIELDS:
        pattern = getattr(match, name)
        if pattern is not None:
            value = getattr(call, name)
            if not _glob(pattern, value):
                return None
            out[name] = value
    for name, wanted, have in (
        ("labels", match.labels, call.labels),
        ("annotations", match.annotations, call.annotations),
    ):
        if wanted:
            if not all(_glob(pattern, have.get(key)) for key, pattern in wanted.items()):
                return None
            out[name] = {key: have[key] for key in sorted(wanted)}
    if rule.opt_in:
        out["opt_in"] = call.annotations[OPT_IN_ANNOTATION]
    return out


class FaultEngine:
    """Decides which rule fires on each call and logs it; deterministic given plan, seed, calls and clock."""

    def __init__(self, plan: FaultPlan, clock: Clock, seed: int = 0, log_path: str | os.PathLike[str] | None = None):
        self._clock = clock
        self._seed = seed
        self._log_path = Path(log_path) if log_path is not None else None
        self._fired: list[Fired] = []
        self._plan = FaultPlan()
        self._states: list[_RuleState] = []
        self._loaded_ns = 0
        self.replace(plan)

    @classmethod
    def from_file(cls, plan_file: str | os.PathLike[str] | None, clock: Clock, seed: int = 0,
                  log_path: str | os.PathLike[str] | None = None) -> FaultEngine:
        """An engine with the plan in ``plan_file`` (validated; errors name the line), or no rules."""
        from kubeharness.faults.plan import load_plan_file

        plan = load_plan_file(Path(plan_file)) if plan_file is not None else FaultPlan()
        return cls(plan, clock, seed, log_path)

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def plan(self) -> FaultPlan:
        return self._plan

    @property
    def loaded_ns(self) -> int:
        """When the current plan was loaded, on the engine's clock; ``after`` counts from here."""
        return self._loaded_ns

    def rules(self) -> tuple[Rule, ...]:
        """The rules in force, in plan order."""
        return self._plan.rules

    def replace(self, plan: FaultPlan) -> None:
        """Put ``plan`` in force: counters and random generators start afresh, ``after`` counts from now."""
        self._plan = plan
        self._states = [_RuleState(rule, self._seed) for rule in plan.rules]
        self._watched = frozenset((rule.where, rule.method) for rule in plan.rules)
        self._loaded_ns = self._clock.now_ns()

    def export_state(self) -> dict[str, object]:
        """The rules' call counters and random generator states and ``loaded_ns``, as JSON-ready data.

        A process that is started afresh for every call (the CNI plugin) saves this after each decision
        and hands it to :meth:`restore_state` next time, so that its decisions are those of one engine."""
        rules: dict[str, object] = {}
        for state in self._states:
            version, internal, gauss = state.rng.getstate()
            rules[state.rule.name] = {"calls": state.calls, "rng": [version, list(internal), gauss]}
        return {"loaded_ns": self._loaded_ns, "rules": rules}

    def restore_state(self, data: Mapping[str, Any]) -> None:
        """Continue from what :meth:`export_state` returned; rules it does not name start afresh."""
        self._loaded_ns = int(data.get("loaded_ns", self._loaded_ns))
        saved = data.get("rules", {})
        for state in self._states:
            one = saved.get(state.rule.name)
            if one is None:
                continue
            state.calls = int(one["calls"])
            version, internal, gauss = one["rng"]
            state.rng.setstate((version, tuple(internal), gauss))

    def clear(self) -> None:
        """Remove every rule (the fired-fault log stays)."""
        self.replace(FaultPlan())

    def fired(self) -> list[Fired]:
        """Every fault fired so far, oldest first."""
        return list(self._fired)

    def watches(self, method: str, *wheres: str) -> bool:
        """Whether any rule in force concerns ``method`` at one of ``wheres``: a cheap test before
        describing a call (which may cost a look-up) for :meth:`decide`."""
        watched = self._watched
        return any((where, method) in watched or (where, ANY_METHOD) in watched for where in wheres)

    def decide(
        self, where: str, method: str, call: CallInfo | None = None, *, also: tuple[str, ...] = ()
    ) -> Decision | None:
        """Count this call for every rule it matches and return what the first firing rule does, if any.

        ``where`` is the component asking (and what the log records); rules written for the places in
        ``also`` apply too: the CRI proxy asks as ``proxy`` with ``also=("cri",)``, so that a plan
        written for the CRI emulator runs unchanged in front of a real runtime."""
        wheres = (where, *also)
        for one in wheres:
            if one not in WHERES:
                raise ValueError(f"unknown where {one!r}; expected one of {', '.join(WHERES)}")
        info = call if call is not None else CallInfo()
        opted = info.opted_in()
        now = self._clock.now_ns()
        winner: tuple[_RuleState, Action, dict[str, object]] | None = None
        shadowed: list[str] = []
        for state in self._states:
            rule = state.rule
            if rule.where not in wheres or (rule.method != ANY_METHOD and rule.method != method):
                continue
            matched = _matched(rule, info, opted)
            if matched is None:
                continue
            state.calls += 1
            action = self._fires(state, now)
            if action is None:
                continue
            if winner is None:
                winner = (state, action, matched)
            else:
                shadowed.append(rule.name)
        if winner is None:
            return None
        state, action, matched = winner
        delay = None
        if isinstance(action, Delay):
            delay = (
                max(0.0, action.seconds + state.rng.uniform(-action.jitter, action.jitter))
                if action.jitter
                else action.seconds
            )
        decision = Decision(state.rule.name, where, method, action, state.calls, delay)
        pod = None if info.pod_name is None else f"{info.namespace or ''}/{info.pod_name}"
        entry = Fired(
            now, state.rule.name, where, method, state.calls, matched, action.as_dict(), delay, tuple(shadowed), pod
        )
        self._record(entry)
        return decision

    def _fires(self, state: _RuleState, now_ns: int) -> Action | None:
        rule, trigger, calls = state.rule, state.rule.when, state.calls
        fire: bool
        if isinstance(trigger, Sequence):
            return trigger.action_at(calls)
        if isinstance(trigger, Always):
            fire = True
        elif isinstance(trigger, Probability):
            fire = state.rng.random() < trigger.p
        elif isinstance(trigger, Nth):
            fire = calls == trigger.n
        elif isinstance(trigger, First):
            fire = calls <= trigger.n
        elif isinstance(trigger, After):
            fire = now_ns - self._loaded_ns >= seconds_to_ns(trigger.seconds)
        else:  # pragma: no cover - the Trigger union is exhaustive
            raise AssertionError(f"unknown trigger {trigger!r}")
        return rule.action if fire else None

    def _record(self, entry: Fired) -> None:
        self._fired.append(entry)
        if self._log_path is not None:
            with self._log_path.open("a", encoding="utf-8") as log:
                log.write(entry.to_json() + "\n")
