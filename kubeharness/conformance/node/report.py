"""The node suite's differential report: every spec on every target, and where the targets disagree.

    python -m kubeharness.conformance.node.report REFERENCE.json OTHER.json [...] \\
        --out reports/node-conformance.md --html reports/node-conformance.html \\
        [--known conformance/node/known_differences.yaml]

Each file is one target's ``--observations`` from the node suite (its name from the entries' ``target``);
the first is the reference (agent+emulator in CI) that every other target is compared with. A difference
is a spec whose outcome differs, whose observed values differ, or whose containers went through other
states: each container's sequence of distinct states (times ignored, but a state that lasted under
:data:`BRIEF_S` on one target may be missing on the other: a target reading its pods less often, or
later, does not see it; see :func:`~.timeline.reconcilable`) and its last restart count, from the
timeline. Each difference is explained in the known-differences file (spec name -> why; a parametrised
spec listed whole or case by case) or listed as not yet explained. The Markdown also lists the failures,
the specs a target skipped (not compared: "Not run", with the reason) and each target's time compression;
the HTML page (:mod:`.timeline_html`) draws the timelines on a time axis shared by the targets of a spec.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kubeharness.conformance.node import timeline_html
from kubeharness.conformance.node.timeline import (
    Drift,
    Results,
    compress,
    drift,
    first_divergence,
    lane_name,
    lanes,
    marked_sequences,
    node_suffix,
    reconcilable,
    sequences,
)
from kubeharness.conformance.plugin import KNOWN_DIFFERENCES, known_differences

Targets = dict[str, Results]  # target name -> its observations, the reference first
DEFAULT_KNOWN = Path("conformance") / "node" / KNOWN_DIFFERENCES
BRIEF_S = 3.0  # node seconds: states shorter than three reads of the slowest target (1 s) are not compared
DRIFT_S = 5.0  # node seconds: a shared state change this far apart from the reference's is listed (not a difference)


@dataclass(frozen=True)
class Difference:
    """One disagreement of ``target`` with the reference target in one spec."""

    nodeid: str
    target: str
    what: str  # ran, outcome, observed:<what>, states <pod>/<container>, restarts <pod>/<container>
    reference: Any
    value: Any


def target_name(results: Results, default: str) -> str:
    return next((str(r["target"]) for r in results.values() if r.get("target")), default)


def load(paths: list[Path]) -> Targets:
    """The observation files by target name, in the order given (a repeated name gets ``#2``, ...)."""
    targets: Targets = {}
    for path in paths:
        results: Results = json.loads(path.read_text())
        name = base = target_name(results, path.stem)
        n = 1
        while name in targets:
            n += 1
            name = f"{base}#{n}"
        targets[name] = results
    return targets


def spec_name(nodeid: str) -> str:
    return nodeid.rsplit("::", 1)[-1]


def short(nodeid: str) -> str:
    return nodeid.split("/")[-1].replace(".py::", " :: ")


def explanation(nodeid: str, known: dict[str, str]) -> str | None:
    """The known-differences key that explains the spec: its case, or the whole parametrised spec."""
    name = spec_name(nodeid)
    for key in (name, name.split("[")[0]):
        if key in known:
            return key
    return None


def outcome(results: Results | None, nodeid: str) -> str:
    entry = (results or {}).get(nodeid)
    return str(entry["outcome"]) if entry else "not run"


def specs(targets: Targets) -> list[str]:
    return sorted({nodeid for results in targets.values() for nodeid in results})


def spec_differences(nodeid: str, targets: Targets) -> list[Difference]:
    """Every disagreement of a target with the reference in this spec."""
    names = list(targets)
    reference = targets[names[0]]
    ref_suffix = node_suffix(reference)
    found: list[Difference] = []
    a = reference.get(nodeid)
    for name in names[1:]:
        b = targets[name].get(nodeid)
        if a is None or b is None:
            if a is not None or b is not None:
                found.append(Difference(nodeid, name, "ran", a is not None, b is not None))
            continue
        if "skipped" in (a["outcome"], b["outcome"]):
            continue  # not run on one of them: nothing to compare (the report lists what was skipped, and why)
        if a["outcome"] != b["outcome"]:
            found.append(Difference(nodeid, name, "outcome", a["outcome"], b["outcome"]))
        observed_a, observed_b = a.get("observed", {}), b.get("observed", {})
        for key in sorted(set(observed_a) | set(observed_b)):
            if observed_a.get(key) != observed_b.get(key):
                found.append(Difference(nodeid, name, f"observed:{key}", observed_a.get(key), observed_b.get(key)))
        seq_a, seq_b = sequences(a, ref_suffix), sequences(b, node_suffix(targets[name]))
        marked_a = marked_sequences(a, BRIEF_S, ref_suffix)
        marked_b = marked_sequences(b, BRIEF_S, node_suffix(targets[name]))
        for lane in [*seq_a, *(lane for lane in seq_b if lane not in seq_a)]:
            states_a, restarts_a = seq_a.get(lane, ([], 0))
            states_b, restarts_b = seq_b.get(lane, ([], 0))
            if not reconcilable(marked_a.get(lane, []), marked_b.get(lane, [])):
                found.append(Difference(nodeid, name, f"states {lane_name(lane)}", states_a, states_b))
            if restarts_a != restarts_b:
                found.append(Difference(nodeid, name, f"restarts {lane_name(lane)}", restarts_a, restarts_b))
    return found


def differences(targets: Targets) -> list[Difference]:
    return [d for nodeid in specs(targets) for d in spec_differences(nodeid, targets)]


def drifts(targets: Targets, threshold_s: float = DRIFT_S) -> list[tuple[str, str, Drift]]:
    """(spec, target, drift) where a target went through a state change as the reference did but more than
    ``threshold_s`` node seconds earlier or later (times are no difference; this shows where they part)."""
    names = list(targets)
    reference = targets[names[0]]
    suffixes = {name: node_suffix(results) for name, results in targets.items()}
    found = []
    for nodeid in specs(targets):
        if nodeid not in reference:
            continue
        ref_lanes = lanes(reference[nodeid], suffixes[names[0]])
        for name in names[1:]:
            if nodeid in targets[name]:
                worst = drift(ref_lanes, lanes(targets[name][nodeid], suffixes[name]))
                if worst is not None and abs(worst.value_s - worst.reference_s) > threshold_s:
                    found.append((nodeid, name, worst))
    return found


def compression(results: Results) -> tuple[int, float, float] | None:
    """(specs, node seconds, wall seconds) summed over the specs that recorded their node time."""
    times = [r["node_time"] for r in results.values() if r.get("node_time")]
    if not times:
        return None
    return len(times), sum(float(t[0]) for t in times), sum(float(t[1]) for t in times)


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _text(value: str) -> str:
    """Text outside code spans: table-safe, and no HTML of its own."""
    return html.escape(_cell(value), quote=False)


def _values(diff: Difference) -> tuple[str, str]:
    if not diff.what.startswith("states "):
        return f"`{_cell(diff.reference)}`", f"`{_cell(diff.value)}`"
    a, b = diff.reference, diff.value
    at = first_divergence(a, b)
    note = ""
    if at is not None and at == min(len(a), len(b)):
        note = f" (stops after {len(b)} of {len(a)} states)" if len(b) < len(a) else f" ({len(b) - len(a)} more)"
    elif at is not None:
        note = f" (from state {at + 1}: `{_cell(a[at])}` vs `{_cell(b[at])}`)"
    return f"`{_cell(compress(a))}`", f"`{_cell(compress(b))}`{note}"


def render(targets: Targets, known: dict[str, str] | None = None, known_label: str = str(DEFAULT_KNOWN)) -> str:
    """The Markdown report."""
    known = known or {}
    names = list(targets)
    reference = names[0]
    all_specs = specs(targets)
    passed = ", ".join(f"{name} {sum(outcome(targets[name], n) == 'passed' for n in all_specs)}" for name in names)
    lines = [
        f"# Node conformance: {reference} (reference) vs {', '.join(names[1:]) or 'no other target'}",
        "",
        f"{len(all_specs)} specs on {len(names)} targets. Passed: {passed}.",
        "",
        "| spec | " + " | ".join(names) + " |",
        "| --- |" + " --- |" * len(names),
    ]
    lines += [f"| {_text(short(n))} | " + " | ".join(outcome(targets[t], n) for t in names) + " |" for n in all_specs]
    found = differences(targets)
    differing = sorted({d.nodeid for d in found})
    explained = {n: key for n in differing if (key := explanation(n, known)) is not None}
    unexplained = [n for n in differing if n not in explained]
    lines += ["", f"## Differences ({len(found)} in {len(differing)} specs, {len(unexplained)} without an "
              "explanation)", ""]
    if not found:
        lines.append("None: every target did what the reference did in every spec.")
    else:
        lines += [f"| spec | target | what | {reference} | target's |", "| --- | --- | --- | --- | --- |"]
        for d in found:
            ref_text, value_text = _values(d)
            lines.append(f"| {_text(short(d.nodeid))} | {d.target} | {_text(d.what)} | {ref_text} | {value_text} |")
    if explained:
        lines += ["", f"## Why ({known_label})", ""]
        for key in sorted(set(explained.values())):
            cases = [short(n) for n, k in explained.items() if k == key]
            lines.append(f"- `{key}`: {known[key]} ({'; '.join(cases)})")
    if unexplained:
        lines += ["", "## Not yet explained", ""]
        lines += [f"- `{spec_name(n)}` ({short(n).split(' :: ')[0]})" for n in unexplained]
    late = drifts(targets)
    if late:
        lines += ["", f"## Timing: the same state changes over {DRIFT_S:g} node seconds apart", "",
                  "Not differences (times are not compared), but where the timelines part; see the HTML page.", "",
                  f"| spec | target | container | state change | {reference} | target's |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for nodeid, name, moved in late:
            apart = f"{moved.value_s:g} s ({moved.value_s - moved.reference_s:+g} s)"
            lines.append(f"| {_text(short(nodeid))} | {name} | {_text(lane_name(moved.lane))} | {moved.index + 1}: "
                         f"`{_cell(moved.state)}` | {moved.reference_s:g} s | {apart} |")
    failures = [(name, n, r) for name in names for n, r in sorted(targets[name].items()) if r["outcome"] == "failed"]
    if failures:
        lines += ["", "## Failures", ""]
        lines += [f"- {name}: {_text(short(n))}: {_text(r.get('failure', ''))}" for name, n, r in failures]
    skipped = [(name, n, r) for name in names for n, r in sorted(targets[name].items()) if r["outcome"] == "skipped"]
    if skipped:
        lines += ["", "## Not run", ""]
        lines += [f"- {name}: {_text(short(n))}: {_text(r.get('skipped', ''))}" for name, n, r in skipped]
    compressed = {name: c for name in names if (c := compression(targets[name])) is not None}
    if compressed:
        lines += ["", "## Node time", "", "Node seconds the specs covered per wall second they took (the specs' own "
                  "time, without setting up and draining the node).", "",
                  "| target | specs | node s | wall s | x |", "| --- | --- | --- | --- | --- |"]
        for name, (count, node_s, wall_s) in compressed.items():
            lines.append(f"| {name} | {count} | {node_s:.0f} | {wall_s:.1f} | {node_s / max(wall_s, 1e-6):.0f} |")
    return "\n".join(lines) + "\n"


def _known(path: Path | None) -> dict[str, str]:
    """The explained differences: from ``path``, or from the default file if there is one."""
    if path is None:
        path = DEFAULT_KNOWN
        if not path.is_file():
            return {}
    if path.name != KNOWN_DIFFERENCES or not path.is_file():
        raise SystemExit(f"--known: no such file {path} (the file is named {KNOWN_DIFFERENCES})")
    try:
        return known_differences(path.parent)
    except pytest.UsageError as err:
        raise SystemExit(str(err)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubeharness.conformance.node.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("observations", type=Path, nargs="+", help="a target's observations; the first is the "
                        "reference")
    parser.add_argument("--out", type=Path, help="write the Markdown report here (default: stdout)")
    parser.add_argument("--html", type=Path, help="also write the timelines page here")
    parser.add_argument("--known", type=Path,
                        help=f"the explained differences (default: {DEFAULT_KNOWN})")
    args = parser.parse_args(argv)
    targets = load(args.observations)
    known = _known(args.known)
    text = render(targets, known, str(args.known or DEFAULT_KNOWN))
    if args.html:
        args.html.parent.mkdir(parents=True, exist_ok=True)
        args.html.write_text(timeline_html.render(targets, {d.nodeid for d in differences(targets)}))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        found = differences(targets)
        unexplained = {d.nodeid for d in found if explanation(d.nodeid, known) is None}
        print(f"node conformance report: {args.out} ({len(found)} differences, {len(unexplained)} specs "
              "without an explanation)")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
