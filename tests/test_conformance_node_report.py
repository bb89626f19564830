"""The node suite's differential report: the observations keep the teardown's timeline; the report, from a
real run of a few node specs and a second target derived from it with deliberate differences, finds them,
explains the known ones and lists the others; the HTML page draws a lane per container per target on a time
axis the targets share; and the sequence comparison on its own."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kubeharness.conformance.node import report, timeline_html
from kubeharness.conformance.node.target import Sample
from kubeharness.conformance.node.timeline import (
    compress,
    drift,
    first_divergence,
    lanes,
    marked_sequence,
    node_suffix,
    reconcilable,
    segments,
    sequences,
    state_sequence,
)
from kubeharness.conformance.plugin import record_report

ROOT = Path(__file__).resolve().parents[1]
KEEPS = "test_a_container_that_exits_under_a_policy_that_keeps_it_down"
LOOP = "test_the_crash_loop_backoff_doubles_from_10_s_to_300_s"
INITS = "test_init_containers_run_in_order_to_completion_before_the_app"
KNOWN = {
    f"{KEEPS}[OnFailure-0-Succeeded-0]": "a case explained on its own",
    LOOP: "the whole spec explained: a real-clock node is followed through its first restarts",
}


# -- the observations: the node fixture's teardown properties reach the spec's entry ----------------------

def _report(when: str, outcome: str, props: list[tuple[str, object]],
            nodeid: str = "t.py::test_x") -> pytest.TestReport:
    return pytest.TestReport(nodeid, ("t.py", 1, "test_x"), {}, outcome, None, when,  # type: ignore[arg-type]
                             user_properties=props)


def test_the_teardown_report_adds_the_timeline_and_node_time_to_the_spec_entry() -> None:
    results: dict[str, dict[str, Any]] = {}
    sample = {"t": 1.0, "pod": "p", "container": "c", "state": "running", "ready": True, "restarts": 0}
    record_report(results, _report("setup", "passed", [("target", "agent+emulator")]))
    assert results == {}  # a passing setup says nothing yet
    props: list[tuple[str, object]] = [("target", "agent+emulator"), ("observed:code", "OK")]
    record_report(results, _report("call", "passed", props))
    record_report(results, _report("teardown", "passed", [*props, ("node_time", [12.0, 0.1]), ("timeline", [sample])]))
    assert results["t.py::test_x"] == {"outcome": "passed", "target": "agent+emulator", "observed": {"code": "OK"},
                                       "node_time": [12.0, 0.1], "timeline": [sample]}
    # a teardown alone (no entry from setup or call) adds none, and a failing teardown keeps the call's outcome
    record_report(results, _report("teardown", "passed", [("timeline", [sample])], nodeid="t.py::test_y"))
    record_report(results, _report("teardown", "failed", [("timeline", [])]))
    assert set(results) == {"t.py::test_x"} and results["t.py::test_x"]["outcome"] == "passed"
    assert results["t.py::test_x"]["timeline"] == []


def test_a_failed_setup_still_makes_an_entry_that_its_teardown_completes() -> None:
    results: dict[str, dict[str, Any]] = {}
    record_report(results, _report("setup", "failed", [("target", "agent+emulator")]))
    record_report(results, _report("teardown", "passed", [("node_time", [0.0, 0.0])]))
    assert results["t.py::test_x"]["outcome"] == "failed" and results["t.py::test_x"]["node_time"] == [0.0, 0.0]


# -- a real run, and a second target derived from it --------------------------------------------------------

@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("node-obs") / "agent-emulator.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    env["GRPC_VERBOSITY"] = "ERROR"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                          "conformance/node/test_restarts.py", "conformance/node/test_init_containers.py",
                          "-k", f"{KEEPS} or {LOOP} or {INITS}", "--observations", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out


def _entry(results: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    return next(v for k, v in results.items() if k.endswith("::" + name))


def derive(reference: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Another target: other node name; one outcome changed, one state changed, one restart count changed,
    and the crash loop 10 s late from its second restart on and followed for fewer restarts."""
    other = copy.deepcopy(reference)
    for entry in other.values():
        entry["target"] = "agent+containerd"
        for s in entry["timeline"]:
            s["pod"] = s["pod"].replace("-conformance-node", "-kind-worker")
    failed = _entry(other, f"{KEEPS}[Never-1-Failed-0]")
    failed["outcome"], failed["failure"] = "failed", 'AssertionError: <script>alert("x")</script> & more'
    _entry(other, f"{KEEPS}[Never-0-Succeeded-0]")["timeline"][-1]["state"] = "terminated:Error"
    _entry(other, f"{KEEPS}[OnFailure-0-Succeeded-0]")["timeline"][-1]["restarts"] = 1
    loop = _entry(other, LOOP)
    loop["timeline"] = loop["timeline"][:-4]
    for s in loop["timeline"][4:]:
        s["t"] += 10
    loop["node_time"][0] = _entry(reference, LOOP)["node_time"][0] + 10
    return other


@pytest.fixture(scope="module")
def rendered(observed: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("node-report")
    reference = json.loads(observed.read_text())
    (folder / "other.json").write_text(json.dumps(derive(reference)))
    (folder / "known_differences.yaml").write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in KNOWN.items()))
    assert report.main([str(observed), str(folder / "other.json"), "--out", str(folder / "r.md"),
                        "--html", str(folder / "r.html"), "--known", str(folder / "known_differences.yaml")]) == 0
    return (folder / "r.md").read_text(), (folder / "r.html").read_text(), reference


def _section(md: str, title: str) -> list[str]:
    body = md.split(f"\n## {title}", 1)[1].split("\n## ", 1)[0]
    return [line for line in body.splitlines()[1:] if line.strip()]


def test_the_run_records_a_timeline_and_node_time_for_every_spec(observed: Path) -> None:
    results = json.loads(observed.read_text())
    assert len(results) == 5
    for entry in results.values():
        assert entry["outcome"] == "passed" and entry["target"] == "agent+emulator"
        assert entry["timeline"] and entry["node_time"][0] >= max(s["t"] for s in entry["timeline"])


def test_the_report_finds_the_differences_and_sorts_them_by_explanation(rendered: tuple[str, str, Any]) -> None:
    md, _, reference = rendered
    assert md.startswith("# Node conformance: agent+emulator (reference) vs agent+containerd")
    row = next(line for line in md.splitlines() if f"{KEEPS}[Never-1-Failed-0] |" in line)
    assert row.endswith("| passed | failed |")
    diffs = _section(md, "Differences")
    assert diffs[0].startswith("## ") is False and "4 specs, 2 without an explanation" in md
    rows = {(line.split(" | ")[0].split(" :: ")[-1], line.split(" | ")[2]) for line in diffs[2:]}
    assert rows == {
        (f"{KEEPS}[Never-1-Failed-0]", "outcome"),
        (f"{KEEPS}[Never-0-Succeeded-0]", "states once/app"),
        (f"{KEEPS}[OnFailure-0-Succeeded-0]", "restarts once/app"),
        (LOOP, "states loop/app"),
        (LOOP, "restarts loop/app"),
    }  # the other node's name in its pods' names is no difference, nor is the late restart; a loop followed
    # for fewer restarts ends at a lower count
    changed = next(line for line in diffs if "states once/app" in line)
    # the reference's own sequence (whether its reads saw the one-second run or not), then where they part
    seq = state_sequence(next(iter(lanes(_entry(reference, f"{KEEPS}[Never-0-Succeeded-0]")).values())))
    assert seq[-1] == "terminated:Completed" and f"`{compress(seq)}`" in changed
    assert f"from state {len(seq)}: `terminated:Completed` vs `terminated:Error`" in changed
    assert "(running → waiting:CrashLoopBackOff) x" in next(line for line in diffs if "states loop/app" in line)
    assert "stops after" in next(line for line in diffs if "states loop/app" in line)
    why = _section(md, "Why")
    assert [line.split("`")[1] for line in why] == sorted(KNOWN)
    assert all(KNOWN[line.split("`")[1]] in line for line in why)
    assert _section(md, "Not yet explained") == [f"- `{KEEPS}[Never-0-Succeeded-0]` (test_restarts)",
                                                 f"- `{KEEPS}[Never-1-Failed-0]` (test_restarts)"]
    assert _section(md, "Failures") == [f"- agent+containerd: test_restarts :: {KEEPS}[Never-1-Failed-0]: "
                                        "AssertionError: &lt;script&gt;alert(\"x\")&lt;/script&gt; &amp; more"]
    late = _section(md, "Timing")
    assert len(late) == 4 and LOOP in late[3] and "(+10 s)" in late[3]
    node_time = _section(md, "Node time")
    assert [line.split(" | ")[0] for line in node_time[3:]] == ["| agent+emulator", "| agent+containerd"]


def _svgs(page: str, spec: str) -> list[str]:
    section = next(s for s in page.split("<section ")[1:] if f"::{spec}<" in s or f"::{spec} <" in s)
    return re.findall(r"<svg .*?</svg>", section, re.S)


def _ticks(svg: str) -> list[str]:
    return re.findall(r'<text class="tick"[^>]*>([^<]*)</text>', svg)


def test_the_page_draws_each_target_on_the_shared_axis_with_a_lane_per_container(
        rendered: tuple[str, str, dict[str, Any]]) -> None:
    _, page, reference = rendered
    assert "<script" not in page and "src=" not in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more" in page
    ref_svg, other_svg = _svgs(page, LOOP)
    assert 'data-target="agent+emulator"' in ref_svg and 'data-target="agent+containerd"' in other_svg
    ref_end = _entry(reference, LOOP)["node_time"][0]
    shared = f'data-t-end="{ref_end + 10:g}"'
    assert shared in ref_svg and shared in other_svg  # the reference drawn to the other's (longer) end
    assert _ticks(ref_svg) == _ticks(other_svg) and len(_ticks(ref_svg)) >= 5
    assert re.findall(r'class="lane"[^>]*>([^<]*)<', ref_svg) == ["loop/app"]
    # the second back-off: from its time on the reference, 10 s later on the other, at the same scale
    backoffs = [s["t"] for s in _entry(reference, LOOP)["timeline"] if s["state"] == "waiting:CrashLoopBackOff"]
    second = f"{backoffs[1]:g}"
    assert f"loop/app: waiting:CrashLoopBackOff from {second} s" in ref_svg
    assert f"loop/app: waiting:CrashLoopBackOff from {backoffs[1] + 10:g} s" in other_svg
    x_of = {svg: float(re.search(rf'<rect class="waiting" x="([\d.]+)"[^>]*><title>loop/app: waiting:CrashLoopBackOff '
                                 rf'from {t:g} s', svg).group(1))  # type: ignore[union-attr]
            for svg, t in ((ref_svg, backoffs[1]), (other_svg, backoffs[1] + 10))}
    assert x_of[other_svg] - x_of[ref_svg] == pytest.approx(10 / (ref_end + 10) * timeline_html.PLOT_W, abs=0.2)
    assert len(re.findall('class="restart"', ref_svg)) == 8 and 'class="ready"' in ref_svg
    for svg in _svgs(page, INITS):
        assert re.findall(r'class="lane"[^>]*>([^<]*)<', svg) == ["inits/first", "inits/second", "inits/app"]
    failed = _svgs(page, f"{KEEPS}[Never-1-Failed-0]")
    assert len(failed) == 2 and 'agent+containerd: <span class="failed">failed</span>' in page


def test_the_page_escapes_names_and_marks_what_it_cannot_see() -> None:
    bad = {"t": 0.0, "pod": 'p<&>"', "container": "c'", "state": "waiting:<Reason>", "ready": False, "restarts": 0}
    targets: dict[str, dict[str, dict[str, Any]]] = {
        "a<1>": {"x.py::test_<b>": {"outcome": "passed", "timeline": [bad]}},
               "b": {"x.py::test_<b>": {"outcome": "failed", "timeline": []}}}
    page = timeline_html.render(targets, {"x.py::test_<b>"})
    assert "<b>" not in page and "<Reason>" not in page and "a<1>" not in page
    assert "p&lt;&amp;&gt;&quot;/c&#x27;" in page and "test_&lt;b&gt;" in page
    assert page.count("<svg ") == 2 and "(no such container here)" in page  # b saw none of a's lanes


# -- the sequence comparison --------------------------------------------------------------------------------

def _s(t: float, state: str, ready: bool = False, restarts: int = 0, pod: str = "p-node",
       container: str = "c") -> Sample:
    return Sample(t, pod, container, state, ready, restarts)


def _entry_of(*got: Sample, node_s: float | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"outcome": "passed", "timeline": [s.to_json() for s in got]}
    if node_s is not None:
        entry["node_time"] = [node_s, 0.1]
    return entry


def test_a_state_sequence_keeps_each_state_change_and_ignores_readiness_and_times() -> None:
    a = [_s(1, "waiting:ContainerCreating"), _s(2, "running"), _s(3, "running", ready=True),
         _s(4, "terminated:Error"), _s(5, "running", restarts=1), _s(6, "running", ready=True, restarts=1)]
    assert state_sequence(a) == ["waiting:ContainerCreating", "running", "terminated:Error", "running"]
    later = [Sample(s.t * 3, s.pod, s.container, s.state, s.ready, s.restarts) for s in a]
    assert sequences(_entry_of(*a), "-node") == sequences(_entry_of(*later), "-node") == {
        ("p", "c"): (["waiting:ContainerCreating", "running", "terminated:Error", "running"], 1)}


@pytest.mark.parametrize(("a", "b", "want"), [
    (["x", "y"], ["x", "y"], None),
    (["x", "y"], ["x", "z"], 1),
    (["x", "y", "z"], ["x"], 1),
    ([], ["x"], 0),
])
def test_first_divergence(a: list[str], b: list[str], want: int | None) -> None:
    assert first_divergence(a, b) == want


def test_compress_folds_repeated_cycles() -> None:
    loop = ["waiting:ContainerCreating", *["running", "waiting:CrashLoopBackOff"] * 3, "running"]
    assert compress(loop) == "waiting:ContainerCreating → (running → waiting:CrashLoopBackOff) x3 → running"
    assert compress(["a", "a", "b"]) == "a x2 → b" and compress(["a", "b"]) == "a → b" and compress([]) == "(none)"


def test_the_node_name_is_left_out_of_the_lanes_only_when_two_pods_show_it() -> None:
    two = {"1": _entry_of(_s(0, "running", pod="web-node-1")), "2": _entry_of(_s(0, "running", pod="db-node-1"))}
    assert node_suffix(two) == "-node-1"
    assert node_suffix({"1": _entry_of(_s(0, "running", pod="web-node-1"))}) == ""
    assert list(lanes(two["1"], "-node-1")) == [("web", "c")]


def test_segments_run_to_the_next_change_and_the_last_to_the_end() -> None:
    got = segments([_s(1, "waiting"), _s(3, "running", ready=True)], 10)
    assert [(g.start_s, g.end_s, g.kind, g.ready) for g in got] == [(1, 3, "waiting", False), (3, 10, "running", True)]


def test_a_state_too_brief_for_a_slower_reader_may_be_missing_but_no_other() -> None:
    creating = "waiting:ContainerCreating"
    fast = marked_sequence([_s(1, creating), _s(2, "running"), _s(3, "terminated:Completed")], 10, 3.0)
    assert fast == [(creating, True), ("running", True), ("terminated:Completed", False)]
    slow = marked_sequence([_s(2, "running"), _s(4, "terminated:Completed")], 10, 3.0)
    assert reconcilable(fast, slow) and reconcilable(slow, fast)  # it missed what lasted a second each
    long_wait = marked_sequence([_s(1, creating), _s(9, "running"), _s(10, "terminated:Completed")], 12, 3.0)
    assert not reconcilable(long_wait, slow)  # eight seconds creating are no reader's blind spot
    error = marked_sequence([_s(0, "running"), _s(5, "terminated:Error"), _s(6, "running")], 9, 3.0)
    oom = marked_sequence([_s(0, "running"), _s(5, "terminated:OOMKilled"), _s(6, "running")], 9, 3.0)
    assert not reconcilable(error, oom)  # each brief, but in the same place and of one kind: they differ
    unseen_run = marked_sequence([_s(1, creating), _s(3, "terminated:Completed")], 9, 3.0)
    unseen_wait = marked_sequence([_s(1.8, "running"), _s(2.8, "terminated:Completed")], 9, 3.0)
    assert reconcilable(unseen_run, unseen_wait)  # each missed what the other saw briefly, of other kinds
    assert not reconcilable(fast, [*fast, ("waiting:CrashLoopBackOff", False)])  # the last state counts


def test_the_differences_of_a_spec_per_target_against_the_reference() -> None:
    ref = _entry_of(_s(0, "running"), _s(5, "terminated:Error"), _s(6, "running", restarts=1))
    same_later = _entry_of(_s(0, "running"), _s(9, "terminated:Error"), _s(12, "running", restarts=1))
    other = _entry_of(_s(0, "running"), _s(5, "terminated:OOMKilled"), _s(6, "running", restarts=1),
                      _s(6, "running", container="sidecar"))
    targets = {"ref": {"a.py::test_a": ref}, "late": {"a.py::test_a": same_later},
               "other": {"a.py::test_a": other, "a.py::test_b": ref}}
    found = [(d.target, d.what) for d in report.differences(targets)]
    assert found == [("other", "states p-node/c"), ("other", "states p-node/sidecar"), ("other", "ran")]
    late = drift(lanes(ref), lanes(same_later))
    assert late is not None and (late.index, late.reference_s, late.value_s) == (2, 6, 12)
    assert [(n, t) for n, t, _ in report.drifts(targets)] == [("a.py::test_a", "late")]


def test_a_spec_a_target_skipped_is_listed_as_not_run_and_not_compared() -> None:
    results: dict[str, dict[str, Any]] = {}
    why = "takes 5 to 9 minutes of real time: run with --node-long"
    skip = pytest.TestReport("a.py::test_a", ("a.py", 1, "test_a"), {}, "skipped", ("a.py", 20, f"Skipped: {why}"),
                             "setup", user_properties=[("target", "slow")])
    record_report(results, skip)
    assert results["a.py::test_a"] == {"outcome": "skipped", "observed": {}, "target": "slow", "skipped": why}
    targets = {"ref": {"a.py::test_a": _entry_of(_s(0, "running"), _s(5, "terminated:Completed"))},
               "slow": results}
    assert report.differences(targets) == []
    md = report.render(targets, {})
    assert _section(md, "Not run") == [f"- slow: a :: test_a: {why}"]
    assert "## Failures" not in md


def test_a_known_difference_is_matched_by_its_case_or_the_whole_spec() -> None:
    known = {"test_a": "whole", "test_b[1]": "one case"}
    assert report.explanation("x.py::test_a[2]", known) == "test_a"
    assert report.explanation("x.py::test_b[1]", known) == "test_b[1]"
    assert report.explanation("x.py::test_b[2]", known) is None
