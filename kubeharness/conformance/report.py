"""The differential report: every spec by target, and every difference between the emulator and a runtime.

    python -m kubeharness.conformance.report EMULATOR.json RUNTIME.json [--out report.md]

Both files are written by the suite's ``--observations`` option. A difference is a spec whose outcome
differs (passed on one, failed on the other) or whose observed values (status codes, exit codes,
reasons, fields) differ. The goal is none; each remaining one needs an explanation or a fix.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kubeharness.conformance.plugin import KNOWN_DIFFERENCES, known_differences


def _load(path: Path) -> dict[str, dict[str, Any]]:
    data: dict[str, dict[str, Any]] = json.loads(path.read_text())
    return data


def _short(nodeid: str) -> str:
    return nodeid.split("/")[-1].replace(".py::", " :: ")


Results = dict[str, dict[str, Any]]


def differences(emulator: Results, runtime: Results) -> list[tuple[str, str, Any, Any]]:
    """(spec, what, emulator's value, runtime's value) for every disagreement."""
    found: list[tuple[str, str, Any, Any]] = []
    for nodeid in sorted(set(emulator) | set(runtime)):
        a, b = emulator.get(nodeid), runtime.get(nodeid)
        if a is None or b is None:
            found.append((nodeid, "ran", a is not None, b is not None))
            continue
        if a["outcome"] != b["outcome"]:
            found.append((nodeid, "outcome", a["outcome"], b["outcome"]))
        for key in sorted(set(a["observed"]) | set(b["observed"])):
            va, vb = a["observed"].get(key), b["observed"].get(key)
            if va != vb:
                found.append((nodeid, key, va, vb))
    return found


def _spec_name(nodeid: str) -> str:
    return nodeid.rsplit("::", 1)[-1]


def render(emulator: Results, runtime: Results, known: dict[str, str] | None = None) -> str:
    runtime_name = next((r.get("target", "runtime") for r in runtime.values()), "runtime")
    specs = sorted(set(emulator) | set(runtime))
    lines = [
        "# CRI conformance: emulator vs " + runtime_name,
        "",
        f"{len(specs)} specs. Passed: emulator {sum(r['outcome'] == 'passed' for r in emulator.values())}, "
        f"{runtime_name} {sum(r['outcome'] == 'passed' for r in runtime.values())}.",
        "",
        f"| spec | emulator | {runtime_name} |",
        "| --- | --- | --- |",
    ]
    for nodeid in specs:
        a = emulator.get(nodeid, {}).get("outcome", "not run")
        b = runtime.get(nodeid, {}).get("outcome", "not run")
        lines.append(f"| {_short(nodeid)} | {a} | {b} |")
    found = differences(emulator, runtime)
    known = known or {}
    explained = sorted({_spec_name(n) for n, *_ in found} & set(known) | {
        _spec_name(n).split("[")[0] for n, *_ in found if _spec_name(n).split("[")[0] in known})
    unexplained = sorted({_spec_name(n) for n, *_ in found} - set(known)
                         - {_spec_name(n) for n, *_ in found if _spec_name(n).split("[")[0] in known})
    lines += ["", f"## Differences ({len(found)} in {len(explained) + len(unexplained)} specs, "
              f"{len(unexplained)} without an explanation)", ""]
    if not found:
        lines.append("None: the emulator did what the runtime did in every spec.")
    else:
        lines += [f"| spec | what | emulator | {runtime_name} |", "| --- | --- | --- | --- |"]
        for nodeid, what, va, vb in found:
            lines.append(f"| {_short(nodeid)} | {what} | `{json.dumps(va)}` | `{json.dumps(vb)}` |")
    if explained:
        lines += ["", "## Why (conformance/known_differences.yaml)", ""]
        lines += [f"- `{name}`: {known[name]}" for name in explained]
    if unexplained:
        lines += ["", "## Not yet explained", ""]
        lines += [f"- `{name}`" for name in unexplained]
    failures = [(n, r) for n, r in sorted(emulator.items()) if r["outcome"] == "failed"] + [
        (n, r) for n, r in sorted(runtime.items()) if r["outcome"] == "failed"
    ]
    if failures:
        lines += ["", "## Failures", ""]
        for nodeid, result in failures:
            lines.append(f"- {result.get('target', '?')}: {_short(nodeid)}: {result.get('failure', '')}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubeharness.conformance.report", description=__doc__)
    parser.add_argument("emulator", type=Path)
    parser.add_argument("runtime", type=Path)
    parser.add_argument("--out", type=Path, help="write the Markdown report here (default: stdout)")
    parser.add_argument("--known", type=Path, default=Path("conformance") / KNOWN_DIFFERENCES,
                        help="the explained differences (default: conformance/known_differences.yaml)")
    args = parser.parse_args(argv)
    known = known_differences(args.known.parent) if args.known.is_file() else {}
    text = render(_load(args.emulator), _load(args.runtime), known)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        found = len(differences(_load(args.emulator), _load(args.runtime)))
        print(f"conformance report: {args.out} ({found} differences)")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
