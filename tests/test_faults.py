"""Tests of the fault plan (loading, validation) and the fault engine (triggers, matching, determinism, log)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from kubeharness.clock import NS_PER_SECOND, VirtualClock
from kubeharness.errors import InvalidArgument
from kubeharness.faults import (
    CNI_METHODS,
    CRI_METHODS,
    CSI_METHODS,
    OPT_IN_ANNOTATION,
    After,
    Always,
    CallInfo,
    CniError,
    CniHang,
    Crash,
    Delay,
    Error,
    FaultEngine,
    FaultPlan,
    First,
    Hang,
    Nth,
    Partial,
    PlanError,
    Probability,
    Sequence,
    Step,
    load_plan,
    load_plan_file,
    parse_sequence,
    plan_from_dict,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "faults" / "one-pod-flaky-sandbox.yaml"
UNAVAILABLE = Error(grpc.StatusCode.UNAVAILABLE, "boom")


def rule(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "r",
        "where": "cri",
        "method": "RunPodSandbox",
        "action": {"error": {"code": "UNAVAILABLE", "message": "boom"}},
    }
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


def engine_for(*rules: dict[str, Any], seed: int = 7, clock: VirtualClock | None = None) -> FaultEngine:
    return FaultEngine(plan_from_dict({"rules": list(rules)}), clock or VirtualClock(), seed)


def firing(engine: FaultEngine, calls: int, method: str = "RunPodSandbox", call: CallInfo | None = None) -> list[bool]:
    return [engine.decide("cri", method, call) is not None for _ in range(calls)]


# --- method lists ----------------------------------------------------------------------------------------


def test_method_lists() -> None:
    assert {"RunPodSandbox", "CreateContainer", "PullImage", "ImageFsInfo", "GetContainerEvents"} <= set(CRI_METHODS)
    assert len(set(CRI_METHODS)) == len(CRI_METHODS)
    assert len(set(CSI_METHODS)) == len(CSI_METHODS) == 25
    assert {"NodePublishVolume", "ControllerModifyVolume", "Probe"} <= set(CSI_METHODS)
    assert CNI_METHODS == ("ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION")


# --- triggers --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ("always", [True] * 6),
        ({"nth": 3}, [False, False, True, False, False, False]),
        ({"nth": 1}, [True, False, False, False, False, False]),
        ({"first": 2}, [True, True, False, False, False, False]),
        ({"probability": 0}, [False] * 6),
        ({"probability": 1}, [True] * 6),
        ({"sequence": "2*off -> 1*on -> off"}, [False, False, True, False, False, False]),
        ({"sequence": "on -> 2*off -> on"}, [True, False, False, True, True, True]),
        ({"sequence": "3*off -> on"}, [False, False, False, True, True, True]),
        ({"sequence": "on"}, [True] * 6),
    ],
)
def test_count_triggers(when: object, expected: list[bool]) -> None:
    assert firing(engine_for(rule(when=when)), 6) == expected


def test_when_defaults_to_always() -> None:
    assert plan_from_dict({"rules": [rule()]}).rules[0].when == Always()


def test_probability_is_seeded_and_roughly_p() -> None:
    plan = rule(when={"probability": 0.3})
    first = firing(engine_for(plan, seed=42), 1000)
    again = firing(engine_for(plan, seed=42), 1000)
    other = firing(engine_for(plan, seed=43), 1000)
    assert first == again
    assert first != other
    assert 240 <= sum(first) <= 360


def test_probability_does_not_depend_on_other_rules() -> None:
    alone = engine_for(rule(when={"probability": 0.5}))
    crowded = engine_for(
        rule(name="other", method="PullImage", when={"probability": 0.5}), rule(when={"probability": 0.5})
    )
    pattern = []
    for _ in range(200):
        crowded.decide("cri", "PullImage")
        pattern.append(crowded.decide("cri", "RunPodSandbox") is not None)
    assert firing(alone, 200) == pattern


async def test_after_counts_from_load_time_on_the_clock() -> None:
    clock = VirtualClock()
    await clock.advance(100)  # before the load: does not count
    engine = engine_for(rule(when={"after": 10}), clock=clock)
    assert engine.loaded_ns == clock.now_ns()
    assert engine.decide("cri", "RunPodSandbox") is None
    await clock.advance(9.5)
    assert engine.decide("cri", "RunPodSandbox") is None
    await clock.advance(0.5)
    assert engine.decide("cri", "RunPodSandbox") is not None
    await clock.advance(1000)
    assert engine.decide("cri", "RunPodSandbox") is not None
    engine.replace(engine.plan)  # a reload starts the wait again
    assert engine.decide("cri", "RunPodSandbox") is None


@pytest.mark.parametrize(
    ("text", "steps"),
    [
        (
            "2*off -> 1*error(UNAVAILABLE) -> off",
            [Step(2, None), Step(1, Error(grpc.StatusCode.UNAVAILABLE, "")), Step(1, None)],
        ),
        ("error(NOT_FOUND, 'no such: thing')", [Step(1, Error(grpc.StatusCode.NOT_FOUND, "no such: thing"))]),
        ("3 * partial(UNKNOWN,leaked) -> off", [Step(3, Partial(grpc.StatusCode.UNKNOWN, "leaked")), Step(1, None)]),
        ("delay(1.5) -> delay(2, 0.5, after)", [Step(1, Delay(1.5)), Step(1, Delay(2.0, 0.5, "after"))]),
        ("hang -> hang()", [Step(1, Hang()), Step(1, Hang())]),
        (
            "crash -> crash(sigkill) -> crash(exit, 3)",
            [Step(1, Crash()), Step(1, Crash("sigkill", 137)), Step(1, Crash("exit", 3))],
        ),
    ],
)
def test_sequence_parsing(text: str, steps: list[Step]) -> None:
    parsed = parse_sequence(text)
    # Default messages name the rule; compare codes and the rest.
    got = [
        Step(
            s.count,
            Error(s.action.code, "") if isinstance(s.action, Error) and "injected" in s.action.message else s.action,
        )
        for s in parsed.steps
    ]
    assert got == steps
    assert parsed.text == text


def test_cni_sequence_parsing() -> None:
    parsed = parse_sequence("cni_error(11, busy, try later) -> cni_hang -> cni_error(7)", "cni")
    assert parsed.steps[0] == Step(1, CniError(11, "busy", "try later"))
    assert parsed.steps[1] == Step(1, CniHang())
    step = parsed.steps[2].action
    assert isinstance(step, CniError) and step.code == 7 and "invalid network config" in step.msg


def test_sequence_steps_and_repeats_its_last_step() -> None:
    engine = engine_for(rule(action=None, when={"sequence": "2*off -> 1*error(UNAVAILABLE) -> delay(3) -> 2*hang"}))
    kinds = []
    for _ in range(8):
        decision = engine.decide("cri", "RunPodSandbox")
        kinds.append(None if decision is None else decision.action.kind)
    assert kinds == [None, None, "error", "delay", "hang", "hang", "hang", "hang"]
    seq = engine.rules()[0].when
    assert isinstance(seq, Sequence) and seq.action_at(1) is None and seq.action_at(100) == Hang()


def test_sequence_on_uses_the_rules_action() -> None:
    plan = plan_from_dict({"rules": [rule(when={"sequence": "off -> on"})]})
    assert plan.rules[0].when == Sequence((Step(1, None), Step(1, UNAVAILABLE)), "off -> on")


# --- actions ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "method", "action", "expected"),
    [
        ("cri", "RunPodSandbox", {"error": {"code": "UNAVAILABLE", "message": "boom"}}, UNAVAILABLE),
        (
            "csi",
            "NodeStageVolume",
            {"partial": {"code": "INTERNAL", "message": "x"}},
            Partial(grpc.StatusCode.INTERNAL, "x"),
        ),
        ("proxy", "PullImage", {"delay": {"seconds": 2, "jitter": 0.5, "when": "after"}}, Delay(2.0, 0.5, "after")),
        ("cri", "PullImage", {"delay": {"seconds": 0}}, Delay(0.0, 0.0, "before")),
        ("cri", "*", "hang", Hang()),
        ("cri", "*", {"hang": None}, Hang()),
        ("cri", "*", {"hang": {}}, Hang()),
        ("cri", "StopContainer", {"crash": {"how": "exit", "exit_code": 2}}, Crash("exit", 2)),
        ("cri", "StopContainer", {"crash": {"how": "sigkill"}}, Crash("sigkill", 137)),
        ("csi", "Probe", "crash", Crash("exit", 1)),
        ("cni", "ADD", {"cni_error": {"code": 11, "msg": "busy", "details": "d"}}, CniError(11, "busy", "d")),
        ("cni", "DEL", {"cni_error": {"code": 100, "msg": "mine"}}, CniError(100, "mine", "")),
        ("cni", "STATUS", {"cni_error": {"code": 50, "msg": "down"}}, CniError(50, "down", "")),
        ("cni", "ADD", "cni_hang", CniHang()),
        ("cni", "CHECK", {"delay": {"seconds": 1}}, Delay(1.0)),
    ],
)
def test_valid_actions(where: str, method: str, action: object, expected: object) -> None:
    plan = plan_from_dict({"rules": [rule(where=where, method=method, action=action)]})
    assert plan.rules[0].action == expected


def test_default_messages_name_the_rule() -> None:
    plan = plan_from_dict({"rules": [rule(name="flaky", action={"error": {"code": "ABORTED"}})]})
    action = plan.rules[0].action
    assert isinstance(action, Error) and "flaky" in action.message


@pytest.mark.parametrize(
    ("where", "action", "words"),
    [
        ("cri", {"error": {}}, "error needs a code"),
        ("cri", {"error": {"code": "OK"}}, "code OK is not an error"),
        ("cri", {"error": {"code": "UNAVAILABE"}}, "unknown gRPC status code 'UNAVAILABE' (did you mean UNAVAILABLE?)"),
        ("cri", {"error": {"code": 14}}, "code must be a gRPC status code name"),
        ("cri", {"error": {"code": "UNKNOWN", "message": 3}}, "message must be a string"),
        (
            "cri",
            {"error": {"code": "UNKNOWN", "mesage": "x"}},
            "unknown key 'mesage' for error (did you mean message?)",
        ),
        ("cri", {"partial": {"code": "NOPE"}}, "unknown gRPC status code 'NOPE'"),
        ("cri", {"delay": {}}, "delay needs seconds"),
        ("cri", {"delay": {"seconds": -1}}, "seconds must be a finite number >= 0"),
        ("cri", {"delay": {"seconds": "2s"}}, "seconds must be a number"),
        ("cri", {"delay": {"seconds": 1, "jitter": -0.1}}, "jitter must be a finite number >= 0"),
        ("cri", {"delay": {"seconds": 1, "when": "during"}}, "delay when must be before or after"),
        ("cri", {"hang": {"seconds": 1}}, "hang takes no fields"),
        ("cri", {"crash": {"how": "panic"}}, "crash how must be exit or sigkill"),
        ("cri", {"crash": {"exit_code": 256}}, "exit_code must be 0..255"),
        ("cri", {"crash": {"how": "sigkill", "exit_code": 1}}, "exit_code applies only to how: exit"),
        ("cni", {"cni_error": {"code": 8}}, "unknown CNI error code 8"),
        ("cni", {"cni_error": {"code": "7"}}, "unknown CNI error code '7'"),
        ("cni", {"cni_error": {"msg": "x"}}, "cni_error needs a code"),
        ("cni", {"error": {"code": "UNAVAILABLE"}}, "action error does not apply to cni (use cni_error)"),
        ("cni", "hang", "action hang does not apply to cni (use cni_hang)"),
        ("cri", "cni_hang", "action cni_hang does not apply to cri"),
        ("csi", {"cni_error": {"code": 7}}, "action cni_error does not apply to csi"),
        ("cri", "explode", "unknown action 'explode'"),
        ("cri", {"eror": {"code": "UNKNOWN"}}, "unknown action 'eror' (did you mean error?)"),
        ("cri", {"error": {"code": "UNKNOWN"}, "hang": {}}, "action must name exactly one of"),
        ("cri", ["hang"], "action must be a mapping"),
    ],
)
def test_invalid_actions(where: str, action: object, words: str) -> None:
    method = "ADD" if where == "cni" else "*"
    with pytest.raises(PlanError) as caught:
        plan_from_dict({"rules": [rule(where=where, method=method, action=action)]})
    assert words in caught.value.message
    assert caught.value.message.startswith("rules[0].action")


# --- matching --------------------------------------------------------------------------------------------

POD = CallInfo(
    pod_name="web-0",
    namespace="shop",
    pod_uid="uid-1",
    labels={"app": "web", "tier": "front"},
    annotations={"team": "blue"},
    container_name="nginx",
    image="registry.local/nginx:1.25",
    volume_id="vol-9",
)


@pytest.mark.parametrize(
    ("match", "fires"),
    [
        ({}, True),
        ({"pod_name": "web-0"}, True),
        ({"pod_name": "web-1"}, False),
        ({"pod_name": "web-*"}, True),
        ({"namespace": "shop"}, True),
        ({"namespace": "default"}, False),
        ({"pod_uid": "uid-1"}, True),
        ({"pod_uid": "uid-2"}, False),
        ({"container_name": "nginx"}, True),
        ({"container_name": "sidecar"}, False),
        ({"image": "registry.local/nginx:1.25"}, True),
        ({"image": "*nginx*"}, True),
        ({"image": "busybox"}, False),
        ({"volume_id": "vol-9"}, True),
        ({"volume_id": "vol-1"}, False),
        ({"labels": {"app": "web"}}, True),
        ({"labels": {"app": "web", "tier": "front"}}, True),
        ({"labels": {"app": "web", "tier": "back"}}, False),
        ({"labels": {"missing": "x"}}, False),
        ({"labels": {"app": "*"}}, True),
        ({"annotations": {"team": "blue"}}, True),
        ({"annotations": {"team": "red"}}, False),
        ({"pod_name": "web-0", "namespace": "shop", "labels": {"app": "web"}, "image": "*:1.25"}, True),
        ({"pod_name": "web-0", "namespace": "other"}, False),
    ],
)
def test_matching(match: dict[str, object], fires: bool) -> None:
    engine = engine_for(rule(match=match))
    assert (engine.decide("cri", "RunPodSandbox", POD) is not None) is fires


def test_a_criterion_the_call_does_not_carry_does_not_match() -> None:
    engine = engine_for(rule(match={"volume_id": "*"}))
    assert engine.decide("cri", "RunPodSandbox", CallInfo(pod_name="p")) is None


def test_where_and_method_must_match() -> None:
    engine = engine_for(rule(method="PullImage"), rule(name="any", where="cni", method="*", action="cni_hang"))
    assert engine.decide("cri", "RunPodSandbox") is None
    assert engine.decide("proxy", "PullImage") is None
    decision = engine.decide("cri", "PullImage")
    assert decision is not None and decision.rule == "r"
    decision = engine.decide("cni", "DEL")
    assert decision is not None and decision.rule == "any"
    with pytest.raises(ValueError, match="unknown where"):
        engine.decide("nfs", "ADD")


@pytest.mark.parametrize(
    ("annotation", "fires"),
    [
        (None, False),
        ("other", False),
        ("flaky", True),
        ("other, flaky", True),
        ("flaky-ish", False),
    ],
)
def test_opt_in_by_annotation(annotation: str | None, fires: bool) -> None:
    engine = engine_for(rule(name="flaky", opt_in=True))
    annotations = {} if annotation is None else {OPT_IN_ANNOTATION: annotation}
    call = CallInfo(pod_name="p", annotations=annotations)
    assert (engine.decide("cri", "RunPodSandbox", call) is not None) is fires


def test_counters_count_only_matching_calls() -> None:
    engine = engine_for(rule(when={"nth": 2}, match={"pod_name": "a"}))
    a, b = CallInfo(pod_name="a"), CallInfo(pod_name="b")
    assert engine.decide("cri", "RunPodSandbox", a) is None
    assert engine.decide("cri", "RunPodSandbox", b) is None
    assert engine.decide("cri", "PullImage", a) is None
    decision = engine.decide("cri", "RunPodSandbox", a)
    assert decision is not None and decision.call == 2


def test_first_firing_rule_wins_and_others_are_shadowed() -> None:
    engine = engine_for(rule(name="one", when={"nth": 2}), rule(name="two", action="hang"))
    first = engine.decide("cri", "RunPodSandbox")
    second = engine.decide("cri", "RunPodSandbox")
    assert first is not None and first.rule == "two"
    assert second is not None and second.rule == "one"
    assert engine.fired()[1].shadowed == ("two",)


def test_delay_jitter_is_seeded_and_bounded() -> None:
    plan = rule(action={"delay": {"seconds": 2, "jitter": 0.5}})
    engine, again = engine_for(plan), engine_for(plan)
    seen = []
    for _ in range(50):
        one, two = engine.decide("cri", "RunPodSandbox"), again.decide("cri", "RunPodSandbox")
        assert one is not None and two is not None and one.delay_seconds == two.delay_seconds
        assert one.delay_seconds is not None and 1.5 <= one.delay_seconds <= 2.5
        seen.append(one.delay_seconds)
    assert len(set(seen)) > 40


# --- control operations ----------------------------------------------------------------------------------


def test_replace_clear_and_rules() -> None:
    engine = engine_for(rule(when={"first": 1}))
    assert [r.name for r in engine.rules()] == ["r"]
    assert engine.decide("cri", "RunPodSandbox") is not None
    assert engine.decide("cri", "RunPodSandbox") is None
    engine.replace(engine.plan)  # counters start afresh
    assert engine.decide("cri", "RunPodSandbox") is not None
    engine.clear()
    assert engine.rules() == ()
    assert engine.decide("cri", "RunPodSandbox") is None
    assert len(engine.fired()) == 2  # the log outlives the rules


def test_every_kind_of_rule_round_trips() -> None:
    rules = [
        rule(name="a", when={"probability": 0.5}, match={"pod_name": "p", "labels": {"a": "b"}}),
        rule(name="b", when={"nth": 2}, action={"partial": {"code": "INTERNAL", "message": "m"}}),
        rule(name="c", when={"first": 3}, action={"delay": {"seconds": 1, "jitter": 0.5, "when": "after"}}),
        rule(name="d", when={"after": 2.5}, action="hang", opt_in=True),
        rule(name="e", action={"crash": {"how": "sigkill"}}),
        rule(name="f", action={"crash": {"exit_code": 4}}, match={"annotations": {"x": "y"}}),
        rule(name="g", where="cni", method="ADD", action={"cni_error": {"code": 7, "msg": "m", "details": "d"}}),
        rule(name="h", where="cni", method="DEL", action="cni_hang"),
        rule(name="i", action=None, when={"sequence": "off -> error(ABORTED, x) -> crash(sigkill)"}),
        rule(name="j", when={"sequence": "2*on -> off"}, where="csi", method="NodePublishVolume"),
    ]
    plan = plan_from_dict({"rules": rules})
    again = plan_from_dict(json.loads(json.dumps(plan.as_dict())))
    assert again == plan


def test_rules_round_trip_through_dicts() -> None:
    plan = load_plan_file(EXAMPLE)
    again = plan_from_dict(json.loads(json.dumps(plan.as_dict())))
    assert [dataclasses.replace(r, line=None) for r in again.rules] == [
        dataclasses.replace(r, line=None) for r in plan.rules
    ]


# --- determinism and the log -----------------------------------------------------------------------------

MIXED = """
rules:
  - name: coin
    where: cri
    method: "*"
    when: {probability: 0.4}
    action: {delay: {seconds: 1, jitter: 0.9}}
  - name: third-create
    where: cri
    method: CreateContainer
    when: {nth: 3}
    action: {error: {code: RESOURCE_EXHAUSTED}}
  - name: seq
    where: cri
    method: StartContainer
    match: {labels: {app: web}}
    when: {sequence: "off -> 2*partial(UNKNOWN) -> off"}
"""


async def run_mixed(seed: int, log: Path | None) -> list[str]:
    clock = VirtualClock()
    engine = FaultEngine(load_plan(MIXED), clock, seed, log)
    call = CallInfo(pod_name="web-0", namespace="shop", labels={"app": "web"}, container_name="c")
    for index in range(60):
        method = ("RunPodSandbox", "CreateContainer", "StartContainer")[index % 3]
        engine.decide("cri", method, call)
        await clock.advance(0.25)
    return [entry.to_json() for entry in engine.fired()]


async def test_same_plan_seed_and_calls_give_the_same_log(tmp_path: Path) -> None:
    first = await run_mixed(3, tmp_path / "a.jsonl")
    second = await run_mixed(3, tmp_path / "b.jsonl")
    assert first == second
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text() == "".join(f + "\n" for f in first)
    assert await run_mixed(4, None) != first
    rules = {json.loads(line)["rule"] for line in first}
    assert rules == {"coin", "third-create", "seq"}


async def test_log_file_content(tmp_path: Path) -> None:
    clock = VirtualClock()
    log = tmp_path / "fired.jsonl"
    log.write_text('{"earlier": true}\n')  # appended to, never truncated
    engine = FaultEngine(
        plan_from_dict({"rules": [rule(name="flaky", opt_in=True, match={"labels": {"app": "web"}})]}), clock, 1, log
    )
    call = CallInfo(
        pod_name="web-0", namespace="shop", labels={"app": "web", "x": "y"}, annotations={OPT_IN_ANNOTATION: "flaky"}
    )
    await clock.advance(1.5)
    assert engine.decide("cri", "RunPodSandbox", call) is not None
    assert engine.decide("cri", "RunPodSandbox", CallInfo(pod_name="other")) is None
    lines = log.read_text().splitlines()
    assert len(lines) == 2 and lines[0] == '{"earlier": true}'
    assert json.loads(lines[1]) == {
        "time_ns": 1_767_225_600 * NS_PER_SECOND + 3 * NS_PER_SECOND // 2,
        "rule": "flaky",
        "where": "cri",
        "method": "RunPodSandbox",
        "call": 1,
        "matched": {"labels": {"app": "web"}, "opt_in": "flaky"},
        "action": {"error": {"code": "UNAVAILABLE", "message": "boom"}},
        "pod": "shop/web-0",
    }
    assert [e.as_dict() for e in engine.fired()] == [json.loads(lines[1])]


# --- validation errors name the line ---------------------------------------------------------------------

GOOD_RULE = """\
rules:
  - name: r
    where: cri
    method: RunPodSandbox
    when: always
    action: {error: {code: UNAVAILABLE}}
"""


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "method: RunPodSandbox",
            "method: RunPodSandbx",
            "line 4: unknown method 'RunPodSandbx' for cri (did you mean RunPodSandbox?)",
        ),
        (
            "where: cri",
            "where: cir",
            "line 3: unknown where 'cir' (did you mean cri?); expected cri, csi, cni or proxy",
        ),
        ("where: cri", "where: csi", "line 4: unknown method 'RunPodSandbox' for csi"),
        (
            "code: UNAVAILABLE",
            "code: UNAVALABLE",
            "line 6: unknown gRPC status code 'UNAVALABLE' (did you mean UNAVAILABLE?)",
        ),
        ("    when: always\n", "    when: always\n    retries: 3\n", "line 6: unknown key 'retries' in a rule"),
        ("    when: always\n", "    whne: always\n", "line 5: unknown key 'whne' in a rule (did you mean when?)"),
        (
            "when: always",
            "when: {probability: 1.5}",
            "line 5: probability must be a number between 0 and 1, got float 1.5",
        ),
        ("when: always", "when: {probability: -0.1}", "line 5: probability must be a number between 0 and 1"),
        (
            "when: always",
            "when: {probability: high}",
            "line 5: probability must be a number between 0 and 1, got str 'high'",
        ),
        (
            "when: always",
            'when: {sequence: "2*off => error(UNAVAILABLE)"}',
            "line 5: bad sequence '2*off => error(UNAVAILABLE)': step 1",
        ),
        (
            "when: always",
            'when: {sequence: "2*off -> -> off"}',
            "line 5: bad sequence '2*off -> -> off': step 2 '' is not",
        ),
        ("when: always", 'when: {sequence: "0*off -> on"}', "line 5: bad sequence '0*off -> on': step 1 has count 0"),
        (
            "when: always",
            'when: {sequence: "off -> eror(UNAVAILABLE)"}',
            "step 2: unknown action 'eror' (did you mean error?)",
        ),
        ("when: always", 'when: {sequence: "off -> error(NOPE)"}', "step 2: unknown gRPC status code 'NOPE'"),
        ("when: always", 'when: {sequence: "off -> delay(1, 2, 3, 4)"}', "step 2: delay takes at most 3 argument(s)"),
        ("when: always", 'when: {sequence: "off(1) -> on"}', "step 1: off takes no arguments"),
        ("when: always", 'when: {sequence: ""}', "line 5: bad sequence: it is empty"),
        ("when: always", "when: {sequence: 3}", "line 5: sequence must be a string"),
        ("when: always", "when: sometimes", "line 5: unknown trigger 'sometimes'"),
        ("when: always", "when: {nth: 0}", "line 5: nth must be >= 1, got 0"),
        ("when: always", "when: {first: 1.5}", "line 5: first must be an integer"),
        ("when: always", "when: {after: -1}", "line 5: after (seconds) must be a finite number >= 0"),
        ("when: always", "when: {nth: 1, first: 2}", "line 5: when must be 'always' or a mapping with one of"),
        ("when: always", "when: {nht: 1}", "line 5: unknown trigger 'nht' (did you mean nth?)"),
        ("    action: {error: {code: UNAVAILABLE}}\n", "", "line 2: rule 'r' needs an action"),
        ("when: always", 'when: {sequence: "off -> error(UNAVAILABLE)"}', "line 6: rule 'r': action is never used"),
        ("- name: r\n", "- name: r\n    opt_in: yes please\n", "line 3: opt_in must be true or false"),
        ("- name: r\n", "- name: r\n    match: {pod: web}\n", "line 3: unknown key 'pod' in match"),
        (
            "- name: r\n",
            "- name: r\n    match: {labels: {tier: 1}}\n",
            "line 3: labels value for 'tier' must be a string",
        ),
        ("- name: r\n", "- name: r\n    match: {image: 3}\n", "line 3: match image must be a string"),
        ("name: r", "name: 'a,b'", "line 2: rule name must be letters"),
        ("rules:", "version: 2\nrules:", "line 1: unsupported plan version 2"),
        ("rules:", "rule:", "line 1: unknown key 'rule' in the plan (did you mean rules?)"),
        ("    where: cri\n", "    where: cri\n    where: csi\n", "line 4: duplicate key 'where'"),
        ("action: {error: {code: UNAVAILABLE}}", "action: {error: {code: UNAVAILABLE}", "not valid YAML"),
    ],
)
def test_validation_errors_name_the_line(old: str, new: str, message: str) -> None:
    assert old in GOOD_RULE
    text = GOOD_RULE.replace(old, new)
    with pytest.raises(PlanError) as caught:
        load_plan(text)
    assert message in caught.value.message, caught.value.message
    assert isinstance(caught.value, InvalidArgument)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_line_numbers_count_from_the_rule_that_is_wrong() -> None:
    text = GOOD_RULE + GOOD_RULE.replace("rules:\n", "").replace("name: r", "name: s").replace("cri", "csi")
    with pytest.raises(PlanError) as caught:
        load_plan(text)
    assert caught.value.line == 9
    assert caught.value.message.startswith("line 9: unknown method 'RunPodSandbox' for csi")


def test_duplicate_rule_names() -> None:
    with pytest.raises(PlanError, match="duplicate rule name 'r'"):
        plan_from_dict({"rules": [rule(), rule()]})


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(GOOD_RULE.replace("cri", "crio"))
    with pytest.raises(PlanError, match=r"plan\.yaml: line 3: unknown where 'crio'"):
        load_plan_file(path)


def test_dict_errors_name_the_path() -> None:
    with pytest.raises(PlanError, match=r"^rules\[0\]\.method: unknown method 'ad' for cni \(did you mean ADD\?\)"):
        plan_from_dict({"rules": [rule(where="cni", method="ad", action="cni_hang")]})
    with pytest.raises(PlanError, match=r"^rules\[0\]\.when\.probability: "):
        plan_from_dict({"rules": [rule(when={"probability": True})]})


def test_empty_plans() -> None:
    assert load_plan("") == FaultPlan()
    assert load_plan("rules: []") == FaultPlan()
    assert plan_from_dict({}) == FaultPlan()


def test_rule_lines_are_recorded() -> None:
    assert [
        r.line for r in load_plan(GOOD_RULE + GOOD_RULE.replace("rules:\n", "").replace("name: r", "name: s")).rules
    ] == [2, 7]


def test_trigger_model() -> None:
    whens = [{"probability": 0.25}, {"nth": 4}, {"first": 2}, {"after": 1.5}]
    rules = plan_from_dict({"rules": [rule(name=f"r{i}", when=w) for i, w in enumerate(whens)]}).rules
    assert [r.when for r in rules] == [Probability(0.25), Nth(4), First(2), After(1.5)]


# --- the example plan ------------------------------------------------------------------------------------


def test_example_plan_faults_exactly_one_pod() -> None:
    plan = load_plan_file(EXAMPLE)
    assert [r.name for r in plan.rules] == ["flaky-sandbox", "slow-pull"]
    engine = FaultEngine(plan, VirtualClock(), 0)
    pod = CallInfo(
        pod_name="flaky",
        namespace="default",
        annotations={OPT_IN_ANNOTATION: "flaky-sandbox,slow-pull"},
    )
    other = CallInfo(pod_name="calm", namespace="default")
    outcomes = []
    for _ in range(4):
        assert engine.decide("cri", "RunPodSandbox", other) is None
        decision = engine.decide("cri", "RunPodSandbox", pod)
        outcomes.append(None if decision is None else decision.action)
    assert [type(o).__name__ for o in outcomes] == ["Error", "Error", "NoneType", "NoneType"]
    assert all(o.code == grpc.StatusCode.UNAVAILABLE for o in outcomes[:2] if isinstance(o, Error))
    pull = CallInfo(
        pod_name="flaky", namespace="default", annotations=pod.annotations, image="docker.io/library/busybox:1.36"
    )
    decision = engine.decide("cri", "PullImage", pull)
    assert decision is not None and decision.delay_seconds == 2.0 and decision.action == Delay(2.0)
    assert engine.decide("cri", "PullImage", CallInfo(image="docker.io/library/busybox:1.36")) is None
    assert [f.rule for f in engine.fired()] == ["flaky-sandbox", "flaky-sandbox", "slow-pull"]
