"""Fault plans: the rule model shared by CRI, CSI, CNI and the proxy, loaded from YAML or dicts and validated.

A plan is a list of rules. Each rule says where it applies (``cri``, ``csi``, ``cni`` or ``proxy``) and to
which method, which calls it matches (pod, namespace, uid, labels, annotations, container, image, volume),
when it fires (always, with a seeded probability, on the Nth matching call, for the first N, after a time
on the injected clock, or along a count sequence such as ``2*off -> 1*error(UNAVAILABLE) -> off``) and what
it does (a gRPC error, a delay, a hang, a partial failure, a crash, a CNI error result, a CNI partial
failure or a CNI hang)::

    rules:
      - name: flaky-sandbox
        where: cri
        method: RunPodSandbox
        opt_in: true                  # only pods annotated kubeharness.io/faults: flaky-sandbox
        match: {namespace: default, labels: {app: web}}
        when: {sequence: "2*error(UNAVAILABLE) -> off"}
      - name: slow-pull
        where: cri
        method: PullImage
        match: {image: "registry.local/busybox:*"}
        action: {delay: {seconds: 2, jitter: 0.5, when: before}}

Every problem is a :class:`PlanError` naming the line of the YAML (or, for dicts, the path such as
``rules[0].method``) and the offending key or value; unknown keys are errors, never ignored.

Matching strings are shell-style patterns (``*``, ``?``, ``[...]``): a plain string matches itself.
``when`` defaults to ``always``. In a sequence, ``off`` does nothing, ``on`` does the rule's ``action``
and the other steps name an action inline: ``error(CODE[, message])``, ``partial(CODE[, message])``,
``delay(seconds[, jitter[, before|after]])``, ``hang``, ``crash([exit|sigkill[, exit_code]])``,
``cni_error(code[, msg[, details]])``,
``cni_partial(code[, msg[, details]])``, ``cni_hang``, ``csi_abnormal([message])``, ``csi_not_ready``. A
step without a count counts once; the last step repeats for ever.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, TypeAlias

import grpc
import yaml

from kubeharness.errors import InvalidArgument
from kubeharness.wire.cri import api_pb2

OPT_IN_ANNOTATION = "kubeharness.io/faults"
"""Pod annotation listing (comma-separated) the ``opt_in`` rules that may fire for the pod."""

Where: TypeAlias = Literal["cri", "csi", "cni", "proxy"]
WHERES: tuple[Where, ...] = ("cri", "csi", "cni", "proxy")
ANY_METHOD = "*"


def _cri_methods() -> tuple[str, ...]:
    services = api_pb2.DESCRIPTOR.services_by_name
    return tuple(m.name for service in ("RuntimeService", "ImageService") for m in services[service].methods)


CRI_METHODS: tuple[str, ...] = _cri_methods()
"""Every RuntimeService and ImageService RPC of CRI ``runtime.v1``; also the proxy's methods."""

CSI_METHODS: tuple[str, ...] = (
    # Identity
    "GetPluginInfo",
    "GetPluginCapabilities",
    "Probe",
    # Node
    "NodeStageVolume",
    "NodeUnstageVolume",
    "NodePublishVolume",
    "NodeUnpublishVolume",
    "NodeGetVolumeStats",
    "NodeExpandVolume",
    "NodeGetCapabilities",
    "NodeGetInfo",
    # Controller
    "CreateVolume",
    "DeleteVolume",
    "ControllerPublishVolume",
    "ControllerUnpublishVolume",
    "ValidateVolumeCapabilities",
    "ListVolumes",
    "GetCapacity",
    "ControllerGetCapabilities",
    "CreateSnapshot",
    "DeleteSnapshot",
    "ListSnapshots",
    "ControllerExpandVolume",
    "ControllerGetVolume",
    "ControllerModifyVolume",
)
"""The Identity, Node and Controller RPCs of CSI v1."""

CNI_METHODS: tuple[str, ...] = ("ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION")
"""The CNI commands (``CNI_COMMAND``) of the CNI spec 1.1."""

METHODS: Mapping[str, tuple[str, ...]] = {
    "cri": CRI_METHODS,
    "csi": CSI_METHODS,
    "cni": CNI_METHODS,
    "proxy": CRI_METHODS,
}

CNI_ERROR_CODES: Mapping[int, str] = {
    1: "incompatible CNI version",
    2: "unsupported field in network configuration",
    3: "container unknown or does not exist",
    4: "invalid necessary environment variables",
    5: "I/O failure",
    6: "failed to decode content",
    7: "invalid network config",
    11: "try again later",
    50: "the plugin is not available",
    51: "the plugin is not available, existing containers may have limited connectivity",
}
"""The error codes the CNI spec defines; codes from 100 up are the plugin's own."""

_GRPC_CODES: Mapping[str, grpc.StatusCode] = {c.name: c for c in grpc.StatusCode if c is not grpc.StatusCode.OK}
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class PlanError(InvalidArgument):
    """A fault plan that cannot be used; the message names the line (or dict path) and what is wrong."""

    def __init__(self, message: str, *, line: int | None = None, path: str = "") -> None:
        super().__init__(message)
        self.line = line
        self.path = path


# --- actions ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ActionBase:
    kind: ClassVar[str]

    def as_dict(self) -> dict[str, object]:
        """The action as plan data, ``{kind: {field: value}}``, JSON-ready (codes by name)."""
        fields: dict[str, object] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            fields[f.name] = value.name if isinstance(value, grpc.StatusCode) else value
        return {self.kind: fields}


@dataclass(frozen=True)
class Error(_ActionBase):
    """Answer the call with this gRPC status instead of doing the work."""

    kind: ClassVar[str] = "error"
    code: grpc.StatusCode
    message: str


@dataclass(frozen=True)
class Partial(_ActionBase):
    """Do the work, then answer with this gRPC status (the partial failure that leaks resources)."""

    kind: ClassVar[str] = "partial"
    code: grpc.StatusCode
    message: str


@dataclass(frozen=True)
class Delay(_ActionBase):
    """Wait ``seconds`` (plus or minus up to ``jitter``) before or after doing the work."""

    kind: ClassVar[str] = "delay"
    seconds: float
    jitter: float = 0.0
    when: Literal["before", "after"] = "before"


@dataclass(frozen=True)
class Hang(_ActionBase):
    """Never answer; the caller gives up by its own deadline."""

    kind: ClassVar[str] = "hang"


@dataclass(frozen=True)
class Crash(_ActionBase):
    """Crash the emulator: exit with ``exit_code`` or die of SIGKILL, so that it must be restarted."""

    kind: ClassVar[str] = "crash"
    how: Literal["exit", "sigkill"] = "exit"
    exit_code: int = 1

    def as_dict(self) -> dict[str, object]:
        fields: dict[str, object] = {"how": self.how}
        if self.how == "exit":
            fields["exit_code"] = self.exit_code
        return {self.kind: fields}


@dataclass(frozen=True)
class CniError(_ActionBase):
    """Answer a CNI command with an error result (``code``, ``msg``, ``details``) and a failing exit."""

    kind: ClassVar[str] = "cni_error"
    code: int
    msg: str
    details: str = ""


@dataclass(frozen=True)
class CniPartial(_ActionBase):
    """Do the CNI command's work (ADD: the address stays allocated), then answer with this error result."""

    kind: ClassVar[str] = "cni_partial"
    code: int
    msg: str
    details: str = ""


@dataclass(frozen=True)
class CniHang(_ActionBase):
    """Let the CNI plugin never return."""

    kind: ClassVar[str] = "cni_hang"


@dataclass(frozen=True)
class CsiAbnormal(_ActionBase):
    """Do the CSI call and report the volume's condition as abnormal with ``message`` (NodeGetVolumeStats)."""

    kind: ClassVar[str] = "csi_abnormal"
    message: str


@dataclass(frozen=True)
class CsiNotReady(_ActionBase):
    """Answer a CSI Probe with ready = false (the driver is not ready yet)."""

    kind: ClassVar[str] = "csi_not_ready"


Action: TypeAlias = Error | Partial | Delay | Hang | Crash | CniError | CniPartial | CniHang | CsiAbnormal | CsiNotReady

ACTION_KINDS: tuple[str, ...] = (
    "error", "partial", "delay", "hang", "crash", "cni_error", "cni_partial", "cni_hang", "csi_abnormal",
    "csi_not_ready",
)
_GRPC_WHERES = ("cri", "csi", "proxy")
_ACTION_WHERES: Mapping[str, tuple[str, ...]] = {
    "error": _GRPC_WHERES,
    "partial": _GRPC_WHERES,
    "delay": WHERES,
    "hang": _GRPC_WHERES,
    "crash": WHERES,
    "cni_error": ("cni",),
    "cni_partial": ("cni",),
    "cni_hang": ("cni",),
    "csi_abnormal": ("csi",),
    "csi_not_ready": ("csi",),
}
_ACTION_FIELDS: Mapping[str, tuple[str, ...]] = {
    "error": ("code", "message"),
    "partial": ("code", "message"),
    "delay": ("seconds", "jitter", "when"),
    "hang": (),
    "crash": ("how", "exit_code"),
    "cni_error": ("code", "msg", "details"),
    "cni_partial": ("code", "msg", "details"),
    "cni_hang": (),
    "csi_abnormal": ("message",),
    "csi_not_ready": (),
}
_TEXT_FIELDS = frozenset({"message", "msg", "details"})


# --- triggers --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Always:
    """Fire on every matching call."""

    def as_dict(self) -> object:
        return "always"


@dataclass(frozen=True)
class Probability:
    """Fire on each matching call with probability ``p``, drawn from the rule's seeded generator."""

    p: float

    def as_dict(self) -> object:
        return {"probability": self.p}


@dataclass(frozen=True)
class Nth:
    """Fire on the Nth matching call only (counting from 1)."""

    n: int

    def as_dict(self) -> object:
        return {"nth": self.n}


@dataclass(frozen=True)
class First:
    """Fire on the first N matching calls."""

    n: int

    def as_dict(self) -> object:
        return {"first": self.n}


@dataclass(frozen=True)
class After:
    """Fire on every matching call once ``seconds`` have passed on the clock since the plan was loaded."""

    seconds: float

    def as_dict(self) -> object:
        return {"after": self.seconds}


@dataclass(frozen=True)
class Step:
    """``count`` matching calls that get ``action`` (``None``: off, the call goes through untouched)."""

    count: int
    action: Action | None


@dataclass(frozen=True)
class Sequence:
    """Walk the steps one matching call at a time; the last step repeats for ever."""

    steps: tuple[Step, ...]
    text: str

    def as_dict(self) -> object:
        return {"sequence": self.text}

    def action_at(self, call: int) -> Action | None:
        """The action for the ``call``-th matching call (from 1), or ``None`` when the step is off."""
        remaining = call
        for step in self.steps:
            if remaining <= step.count:
                return step.action
            remaining -= step.count
        return self.steps[-1].action


Trigger: TypeAlias = Always | Probability | Nth | First | After | Sequence

TRIGGER_KINDS: tuple[str, ...] = ("probability", "nth", "first", "after", "sequence")


# --- rules and plans -------------------------------------------------------------------------------------

MATCH_FIELDS: tuple[str, ...] = ("pod_name", "namespace", "pod_uid", "container_name", "image", "volume_id")


@dataclass(frozen=True)
class Match:
    """What a call must carry for the rule to apply; every given field must hold (``None``: any)."""

    pod_name: str | None = None
    namespace: str | None = None
    pod_uid: str | None = None
    container_name: str | None = None
    image: str | None = None
    volume_id: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {name: getattr(self, name) for name in MATCH_FIELDS if getattr(self, name) is not None}
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True)
class Rule:
    """One fault rule. ``action`` is what fires, or for a sequence what its ``on`` steps do."""

    name: str
    where: Where
    method: str
    action: Action | None
    when: Trigger = field(default_factory=Always)
    match: Match = field(default_factory=Match)
    opt_in: bool = False
    line: int | None = None

    def action_for(self, call: int) -> Action | None:
        """The action for the ``call``-th matching call if the trigger is a sequence, else ``action``."""
        if isinstance(self.when, Sequence):
            return self.when.action_at(call)
        return self.action

    def as_dict(self) -> dict[str, object]:
        """The rule as plan data; :func:`plan_from_dict` reads it back to an equal rule (but ``line``)."""
        out: dict[str, object] = {"name": self.name, "where": self.where, "method": self.method}
        if self.opt_in:
            out["opt_in"] = True
        match = self.match.as_dict()
        if match:
            out["match"] = match
        out["when"] = self.when.as_dict()
        if self.action is not None:
            out["action"] = self.action.as_dict()
        return out


@dataclass(frozen=True)
class FaultPlan:
    """An ordered list of rules with unique names; the first rule that fires on a call wins."""

    rules: tuple[Rule, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {"rules": [rule.as_dict() for rule in self.rules]}


# --- loading ---------------------------------------------------------------------------------------------

_Path: TypeAlias = tuple[str | int, ...]


class _Bad(Exception):
    """A problem found below a path; ``key`` is the offending sub-key, if any."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.key = key


def _format_path(path: _Path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


class _Context:
    """Where a plan came from: turns a data path into a message naming the line (or the path)."""

    def __init__(self, lines: Mapping[_Path, int] | None, source: str | None) -> None:
        self.lines = lines
        self.source = source

    def line_of(self, path: _Path) -> int | None:
        if self.lines is None:
            return None
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None

    def error(self, path: _Path, message: str) -> PlanError:
        line = self.line_of(path)
        where = f"line {line}" if line is not None else (_format_path(path) or "plan")
        prefix = f"{self.source}: " if self.source else ""
        return PlanError(f"{prefix}{where}: {message}", line=line, path=_format_path(path))


def _suggest(word: str, options: Collection[str]) -> str:
    """`` (did you mean X?)`` for the closest option: same letters in another case or order first, then difflib."""
    by_lower = {option.lower(): option for option in options}
    lowered = word.lower()
    close = [by_lower[lowered]] if lowered in by_lower else []
    close = close or [option for option in options if sorted(option.lower()) == sorted(lowered)]
    close = close or [by_lower[m] for m in difflib.get_close_matches(lowered, list(by_lower), n=1, cutoff=0.6)]
    return f" (did you mean {close[0]}?)" if close else ""


def _one_of(options: Collection[str]) -> str:
    names = list(options)
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]


def _mapping(ctx: _Context, value: object, path: _Path, what: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise ctx.error(path, f"{what} must be a mapping, got {_show(value)}")
    for key in value:
        if not isinstance(key, str):
            raise ctx.error(path, f"key {key!r} in {what} must be a string")
    return value


def _check_keys(
    ctx: _Context,
    value: Mapping[str, object],
    path: _Path,
    what: str,
    allowed: Collection[str],
    required: Collection[str] = (),
) -> None:
    for key in value:
        if key not in allowed:
            raise ctx.error((*path, key), f"unknown key {key!r} in {what}{_suggest(key, allowed)}")
    for key in required:
        if key not in value:
            raise ctx.error(path, f"{what} needs {key!r}")


def _show(value: object) -> str:
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {value!r}"


def _text(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise _Bad(f"{key} must be a string, got {_show(value)}", key)
    return value


def _number(value: object, key: str, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad(f"{key} must be a number, got {_show(value)}", key)
    if not minimum <= value < float("inf"):  # also false for NaN
        raise _Bad(f"{key} must be a finite number >= {minimum:g}, got {value!r}", key)
    return float(value)


def _integer(value: object, key: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(f"{key} must be an integer, got {_show(value)}", key)
    if value < minimum:
        raise _Bad(f"{key} must be >= {minimum}, got {value}", key)
    return value


def _grpc_code(value: object) -> grpc.StatusCode:
    if not isinstance(value, str):
        raise _Bad(f"code must be a gRPC status code name such as UNAVAILABLE, got {_show(value)}", "code")
    if value == "OK":
        raise _Bad("code OK is not an error", "code")
    code = _GRPC_CODES.get(value)
    if code is None:
        raise _Bad(f"unknown gRPC status code {value!r}{_suggest(value.upper(), _GRPC_CODES)}", "code")
    return code


def _build_action(kind: str, fields: Mapping[str, object], where: str, rule: str) -> Action:
    """An action of ``kind`` from its fields; raises :class:`_Bad` naming the offending field."""
    if kind not in ACTION_KINDS:
        raise _Bad(f"unknown action {kind!r}{_suggest(kind, ACTION_KINDS)}; expected {_one_of(ACTION_KINDS)}")
    if where not in _ACTION_WHERES[kind]:
        hints = {"hang": " (use cni_hang)", "error": " (use cni_error)", "partial": " (use cni_partial)"}
        hint = hints.get(kind, "") if where == "cni" else ""
        raise _Bad(f"action {kind} does not apply to {where}{hint}")
    allowed = _ACTION_FIELDS[kind]
    for key in fields:
        if key not in allowed:
            listing = f"; {kind} takes {_one_of(allowed)}" if allowed else f"; {kind} takes no fields"
            raise _Bad(f"unknown key {key!r} for {kind}{_suggest(key, allowed)}{listing}", key)
    default_message = f"injected fault {rule!r}"
    if kind in ("error", "partial"):
        if "code" not in fields:
            raise _Bad(f"{kind} needs a code (a gRPC status code name such as UNAVAILABLE)")
        code = _grpc_code(fields["code"])
        message = _text(fields.get("message", default_message), "message")
        return Error(code, message) if kind == "error" else Partial(code, message)
    if kind == "delay":
        if "seconds" not in fields:
            raise _Bad("delay needs seconds")
        seconds = _number(fields["seconds"], "seconds")
        jitter = _number(fields.get("jitter", 0.0), "jitter")
        when = fields.get("when", "before")
        if when not in ("before", "after"):
            raise _Bad(f"delay when must be before or after, got {_show(when)}", "when")
        return Delay(seconds, jitter, "before" if when == "before" else "after")
    if kind == "crash":
        how = fields.get("how", "exit")
        if how not in ("exit", "sigkill"):
            raise _Bad(f"crash how must be exit or sigkill, got {_show(how)}", "how")
        if how == "sigkill":
            if "exit_code" in fields:
                raise _Bad("exit_code applies only to how: exit (SIGKILL ends with 137)", "exit_code")
            return Crash("sigkill", 137)
        exit_code = _integer(fields.get("exit_code", 1), "exit_code", minimum=0)
        if exit_code > 255:
            raise _Bad(f"exit_code must be 0..255, got {exit_code}", "exit_code")
        return Crash("exit", exit_code)
    if kind in ("cni_error", "cni_partial"):
        if "code" not in fields:
            raise _Bad(f"{kind} needs a code (a CNI error code: 1-7, 11, 50, 51, or 100 and up)")
        cni_code = fields["code"]
        if (
            isinstance(cni_code, bool)
            or not isinstance(cni_code, int)
            or not (cni_code in CNI_ERROR_CODES or cni_code >= 100)
        ):
            known = ", ".join(str(c) for c in CNI_ERROR_CODES)
            raise _Bad(
                f"unknown CNI error code {cni_code!r}: the spec defines {known}; 100 and up are the plugin's", "code"
            )
        default_msg = f"{CNI_ERROR_CODES.get(cni_code, 'plugin error')} ({default_message})"
        msg = _text(fields.get("msg", default_msg), "msg")
        details = _text(fields.get("details", ""), "details")
        return CniError(cni_code, msg, details) if kind == "cni_error" else CniPartial(cni_code, msg, details)
    if kind == "csi_abnormal":
        return CsiAbnormal(_text(fields.get("message", f"volume reported abnormal ({default_message})"), "message"))
    if kind == "csi_not_ready":
        return CsiNotReady()
    return Hang() if kind == "hang" else CniHang()


def _action(ctx: _Context, value: object, path: _Path, where: str, rule: str) -> Action:
    fields: Mapping[str, object] = {}
    if isinstance(value, str):
        kind = value
    else:
        spec = _mapping(ctx, value, path, "action")
        if len(spec) != 1:
            raise ctx.error(path, f"action must name exactly one of {_one_of(ACTION_KINDS)}, got {sorted(spec)}")
        ((kind, raw),) = spec.items()
        if raw is not None:
            fields = _mapping(ctx, raw, (*path, kind), kind)
    try:
        return _build_action(kind, fields, where, rule)
    except _Bad as bad:
        sub: _Path = (kind,) if kind in ACTION_KINDS and not isinstance(value, str) else ()
        raise ctx.error(path + sub + ((bad.key,) if bad.key else ()), bad.message) from None


_STEP_RE = re.compile(r"\s*(?:(?P<count>\d+)\s*\*\s*)?(?P<name>[A-Za-z_][A-Za-z_0-9]*)\s*(?:\((?P<args>[^()]*)\))?\s*")


def _arg(raw: str, key: str) -> object:
    text = raw.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if key in _TEXT_FIELDS:
        return text
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def _parse_steps(text: str, where: str, rule: str, on: Action | None) -> tuple[tuple[Step, ...], bool]:
    """The steps of a sequence and whether it uses ``on``; raises :class:`_Bad`."""
    if not text.strip():
        raise _Bad("bad sequence: it is empty")
    steps: list[Step] = []
    uses_on = False
    for index, part in enumerate(text.split("->"), start=1):
        found = _STEP_RE.fullmatch(part)
        if found is None:
            raise _Bad(
                f"bad sequence {text!r}: step {index} {part.strip()!r} is not [N*]action[(args)], "
                "e.g. 2*off -> 1*error(UNAVAILABLE) -> off"
            )
        count = int(found["count"]) if found["count"] is not None else 1
        if count < 1:
            raise _Bad(f"bad sequence {text!r}: step {index} has count 0")
        name, args = found["name"], found["args"]
        if name in ("off", "on"):
            if args is not None and args.strip():
                raise _Bad(f"bad sequence {text!r}: step {index}: {name} takes no arguments")
            if name == "on":
                if on is None:
                    raise _Bad(f"bad sequence {text!r}: step {index} is 'on' but the rule has no action")
                uses_on = True
            steps.append(Step(count, on if name == "on" else None))
            continue
        if name not in ACTION_KINDS:
            options = ("off", "on", *ACTION_KINDS)
            raise _Bad(f"bad sequence {text!r}: step {index}: unknown action {name!r}{_suggest(name, options)}")
        values = [] if args is None or not args.strip() else args.split(",")
        keys = _ACTION_FIELDS[name]
        if len(values) > len(keys):
            raise _Bad(f"bad sequence {text!r}: step {index}: {name} takes at most {len(keys)} argument(s)")
        fields = {key: _arg(value, key) for key, value in zip(keys, values, strict=False)}
        try:
            action = _build_action(name, fields, where, rule)
        except _Bad as bad:
            raise _Bad(f"bad sequence {text!r}: step {index}: {bad.message}") from None
        steps.append(Step(count, action))
    return tuple(steps), uses_on


def parse_sequence(text: str, where: Where = "cri", on: Action | None = None, rule: str = "sequence") -> Sequence:
    """Parse a count sequence such as ``2*off -> 1*error(UNAVAILABLE) -> off`` for a rule at ``where``.

    ``on`` is what an ``on`` step does (the rule's action). Raises :class:`PlanError`.
    """
    try:
        steps, _ = _parse_steps(text, where, rule, on)
    except _Bad as bad:
        raise PlanError(bad.message) from None
    return Sequence(steps, text)


def _when(ctx: _Context, value: object, path: _Path, where: str, rule: str, on: Action | None) -> tuple[Trigger, bool]:
    """The trigger and, for a sequence, whether it uses the rule's action."""
    expected = "when must be 'always' or a mapping with one of " + _one_of(TRIGGER_KINDS)
    if value == "always":
        return Always(), False
    if isinstance(value, str):
        raise ctx.error(path, f"unknown trigger {value!r}{_suggest(value, ('always',))}; {expected}")
    spec = _mapping(ctx, value, path, "when")
    if len(spec) != 1:
        raise ctx.error(path, f"{expected}, got {sorted(spec) or 'an empty mapping'}")
    ((kind, raw),) = spec.items()
    sub = (*path, kind)
    if kind not in TRIGGER_KINDS:
        raise ctx.error(sub, f"unknown trigger {kind!r}{_suggest(kind, (*TRIGGER_KINDS, 'always'))}; {expected}")
    try:
        if kind == "probability":
            if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 <= raw <= 1:
                raise _Bad(f"probability must be a number between 0 and 1, got {_show(raw)}")
            p = float(raw)
            return Probability(p), False
        if kind == "nth":
            return Nth(_integer(raw, "nth", minimum=1)), False
        if kind == "first":
            return First(_integer(raw, "first", minimum=1)), False
        if kind == "after":
            return After(_number(raw, "after (seconds)")), False
        text = _text(raw, "sequence")
        steps, uses_on = _parse_steps(text, where, rule, on)
        return Sequence(steps, text), uses_on
    except _Bad as bad:
        raise ctx.error(sub, bad.message) from None


def _string_map(ctx: _Context, value: object, path: _Path, what: str) -> dict[str, str]:
    spec = _mapping(ctx, value, path, what)
    out: dict[str, str] = {}
    for key, item in spec.items():
        if not isinstance(item, str):
            raise ctx.error((*path, key), f"{what} value for {key!r} must be a string (quote it), got {_show(item)}")
        out[key] = item
    return out


def _match(ctx: _Context, value: object, path: _Path) -> Match:
    if value is None:
        return Match()
    spec = _mapping(ctx, value, path, "match")
    _check_keys(ctx, spec, path, "match", (*MATCH_FIELDS, "labels", "annotations"))
    strings: dict[str, str] = {}
    for key in MATCH_FIELDS:
        if key in spec:
            item = spec[key]
            if not isinstance(item, str):
                raise ctx.error((*path, key), f"match {key} must be a string (quote it), got {_show(item)}")
            strings[key] = item
    labels = _string_map(ctx, spec.get("labels", {}), (*path, "labels"), "labels")
    annotations = _string_map(ctx, spec.get("annotations", {}), (*path, "annotations"), "annotations")
    return Match(**strings, labels=labels, annotations=annotations)


_RULE_KEYS = ("name", "where", "method", "match", "when", "action", "opt_in")


def _rule(ctx: _Context, value: object, path: _Path, seen: set[str]) -> Rule:
    spec = _mapping(ctx, value, path, "a rule")
    _check_keys(ctx, spec, path, "a rule", _RULE_KEYS, required=("name", "where", "method"))
    name = spec["name"]
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ctx.error(
            (*path, "name"), f"rule name must be letters, digits, '.', '_' or '-' (no commas), got {_show(name)}"
        )
    if name in seen:
        raise ctx.error((*path, "name"), f"duplicate rule name {name!r}")
    seen.add(name)
    where = spec["where"]
    if where not in WHERES:
        hint = _suggest(where, WHERES) if isinstance(where, str) else ""
        raise ctx.error((*path, "where"), f"unknown where {where!r}{hint}; expected {_one_of(WHERES)}")
    method = spec["method"]
    if not isinstance(method, str):
        raise ctx.error((*path, "method"), f"method must be a string, got {_show(method)}")
    if method != ANY_METHOD and method not in METHODS[where]:
        raise ctx.error((*path, "method"), f"unknown method {method!r} for {where}{_suggest(method, METHODS[where])}")
    opt_in = spec.get("opt_in", False)
    if not isinstance(opt_in, bool):
        raise ctx.error((*path, "opt_in"), f"opt_in must be true or false, got {_show(opt_in)}")
    match = _match(ctx, spec.get("match"), (*path, "match"))
    action = _action(ctx, spec["action"], (*path, "action"), where, name) if "action" in spec else None
    when, uses_on = _when(ctx, spec.get("when", "always"), (*path, "when"), where, name, action)
    if isinstance(when, Sequence):
        if action is not None and not uses_on:
            raise ctx.error((*path, "action"), f"rule {name!r}: action is never used: its sequence has no 'on' step")
    elif action is None:
        raise ctx.error(path, f"rule {name!r} needs an action (or a sequence that names its actions)")
    return Rule(name, where, method, action, when, match, opt_in, ctx.line_of(path))


def _plan(ctx: _Context, data: object) -> FaultPlan:
    if data is None:
        return FaultPlan()
    spec = _mapping(ctx, data, (), "the plan")
    _check_keys(ctx, spec, (), "the plan", ("version", "rules"))
    if "version" in spec and (spec["version"] != 1 or isinstance(spec["version"], bool)):
        raise ctx.error(("version",), f"unsupported plan version {spec['version']!r}; this is version 1")
    raw_rules = spec.get("rules")
    if raw_rules is None:
        return FaultPlan()
    if not isinstance(raw_rules, list):
        raise ctx.error(("rules",), f"rules must be a list, got {_show(raw_rules)}")
    seen: set[str] = set()
    return FaultPlan(tuple(_rule(ctx, item, ("rules", index), seen) for index, item in enumerate(raw_rules)))


def _from_node(
    node: yaml.Node, path: _Path, lines: dict[_Path, int], construct: Callable[[yaml.Node], object]
) -> object:
    """Plain data from a composed YAML node, recording the line of every key and item on the way."""
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, object] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            key = construct(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                raise PlanError(f"line {line}: keys must be strings, got {_show(key)}", line=line)
            if key in out:
                raise PlanError(f"line {line}: duplicate key {key!r}", line=line)
            lines[(*path, key)] = line
            out[key] = _from_node(value_node, (*path, key), lines, construct)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_from_node(item, (*path, index), lines, construct) for index, item in enumerate(node.value)]
    return construct(node)


def load_plan(text: str, source: str | None = None) -> FaultPlan:
    """Load and validate a plan from YAML text; ``source`` (a file name) prefixes error messages."""
    prefix = f"{source}: " if source else ""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        where = f"line {line}: " if line is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PlanError(f"{prefix}{where}not valid YAML: {problem}", line=line) from None
    if root is None:
        return FaultPlan()
    constructor = yaml.constructor.SafeConstructor()
    lines: dict[_Path, int] = {}
    try:
        data = _from_node(root, (), lines, constructor.construct_object)
    except PlanError as exc:
        raise PlanError(f"{prefix}{exc.message}", line=exc.line) from None
    except yaml.YAMLError as exc:
        raise PlanError(f"{prefix}not valid YAML: {exc}") from None
    return _plan(_Context(lines, source), data)


def load_plan_file(path: str | Path) -> FaultPlan:
    """Load and validate a plan from a YAML file; errors name the file and the line."""
    file = Path(path)
    return load_plan(file.read_text(encoding="utf-8"), source=str(file))


def plan_from_dict(data: Mapping[str, object]) -> FaultPlan:
    """Validate a plan given as Python data (the YAML structure); errors name the path, e.g. rules[0].method."""
    return _plan(_Context(None, None), data)
