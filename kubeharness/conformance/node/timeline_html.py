"""The node report's HTML page: every spec's container timelines, one target above the other.

One self-contained file (inline CSS and SVG, no scripts, nothing fetched). Per spec and target, an SVG
with a lane per container: bars coloured by state (waiting, running, terminated; a completed container in
grey), the state's reason as a label where it fits and as a tooltip (SVG ``<title>``) always, a green band
under the bar while the container is ready, and a mark where its restart count goes up. The targets of a
spec share one time axis in node seconds (to the longest of their timelines), so a restart 10 s late on
one target shows as a shifted bar. :mod:`kubeharness.conformance.node.report` calls :func:`render`.
"""

from __future__ import annotations

import itertools
import math
from html import escape
from typing import Any

from kubeharness.conformance.node.timeline import (
    Lane,
    Results,
    Segment,
    end_s,
    lane_name,
    lanes,
    node_suffix,
    runs,
    segments,
)

LABEL_W = 210  # px: the lanes' names
PLOT_W = 860  # px: the time axis
LANE_H = 30  # px per lane: restart marks, the bar, the ready band
BAR_Y, BAR_H = 10, 14  # px, within a lane
READY_Y, READY_H = 25, 3
AXIS_H = 24
CHAR_W = 6.2  # px per character of a 10 px label, to tell whether it fits

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h2 { font-size: 1.1em; margin: 1.6em 0 0.3em; }
h3 { font-size: 0.95em; margin: 0.8em 0 0.2em; font-weight: normal; }
table { border-collapse: collapse; }
td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: left; }
.passed { color: #22772e; } .failed { color: #b3261e; font-weight: bold; } .skipped, .not-run { color: #777; }
.differs { background: #fde7c2; padding: 0 4px; border-radius: 3px; }
.failure { color: #b3261e; font-family: monospace; font-size: 12px; margin: 0; white-space: pre-wrap; }
svg text { font: 10px system-ui, sans-serif; }
svg .lane { font-size: 11px; fill: #333; }
svg .tick { fill: #555; } svg .grid { stroke: #e4e4e4; } svg .end { stroke: #999; stroke-dasharray: 3 2; }
svg .waiting { fill: #e3a72f; } svg .running { fill: #4a7fc1; } svg .terminated { fill: #c44d4d; }
svg .completed { fill: #8c8c8c; } svg .unknown { fill: #bbbbbb; } svg .ready { fill: #2ca02c; }
svg .restart { stroke: #111; stroke-width: 2; } svg .label { fill: #fff; } svg .count { fill: #111; }
.legend span { display: inline-block; padding: 0 6px; margin-right: 6px; color: #fff; border-radius: 2px; }
"""


def ticks(end: float, most: int = 10) -> list[float]:
    """Round tick positions from 0 to ``end`` node seconds, at most ``most`` + 1 of them."""
    if end <= 0:
        return [0.0]
    raw = end / most
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return [round(i * step, 6) for i in range(int(end / step + 1e-9) + 1)]


def _x(t: float, end: float) -> float:
    return LABEL_W + (t / end if end > 0 else 0.0) * PLOT_W


def _fmt(t: float) -> str:
    return f"{t:g}"


def _css_class(seg: Segment) -> str:
    if seg.kind == "terminated" and seg.reason == "Completed":
        return "terminated completed"
    return seg.kind if seg.kind in ("waiting", "running", "terminated") else "unknown"


def _lane(parts: list[Segment], top: float, end: float, name: str) -> list[str]:
    """The SVG elements of one lane: its bars, labels, ready bands and restart marks."""
    out = [f'<text class="lane" x="4" y="{top + BAR_Y + 11}">{escape(name)}</text>']
    if not parts:
        out.append(f'<text class="tick" x="{LABEL_W + 4}" y="{top + BAR_Y + 11}">(no such container here)</text>')
    for start, stop, seg in runs(parts, lambda s: s.state):
        x0, x1 = _x(start, end), _x(stop, end)
        tip = f"{name}: {seg.state} from {_fmt(start)} s to {_fmt(stop)} s"
        out.append(f'<rect class="{_css_class(seg)}" x="{x0:.1f}" y="{top + BAR_Y}" width="{max(x1 - x0, 1):.1f}" '
                   f'height="{BAR_H}"><title>{escape(tip)}</title></rect>')
        label = seg.reason or seg.kind
        if (x1 - x0) > len(label) * CHAR_W + 4:
            out.append(f'<text class="label" x="{x0 + 3:.1f}" y="{top + BAR_Y + 11}">{escape(label)}</text>')
    for start, stop, seg in runs(parts, lambda s: s.ready):
        if seg.ready:
            x0, x1 = _x(start, end), _x(stop, end)
            out.append(f'<rect class="ready" x="{x0:.1f}" y="{top + READY_Y}" width="{max(x1 - x0, 1):.1f}" '
                       f'height="{READY_H}"><title>{escape(f"{name}: ready from {_fmt(start)} s to {_fmt(stop)} s")}'
                       "</title></rect>")
    for before, seg in itertools.pairwise(parts):
        if seg.restarts > before.restarts:
            x = _x(seg.start_s, end)
            tip = f"{name}: restart {seg.restarts} at {_fmt(seg.start_s)} s"
            out.append(f'<g><title>{escape(tip)}</title><line class="restart" x1="{x:.1f}" y1="{top + 2}" '
                       f'x2="{x:.1f}" y2="{top + BAR_Y + BAR_H}"/><text class="count" x="{x + 2:.1f}" '
                       f'y="{top + 8}">{seg.restarts}</text></g>')
    return out


def target_svg(target: str, entry: dict[str, Any], suffix: str, order: list[Lane], end: float) -> str:
    """One target's lanes for a spec, on the spec's shared axis from 0 to ``end`` node seconds."""
    by_lane = lanes(entry, suffix)
    own_end = end_s(entry)
    height = LANE_H * max(len(order), 1) + AXIS_H
    width = LABEL_W + PLOT_W + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" data-target="{escape(target)}" '
           f'data-t-end="{_fmt(end)}" width="{width}" height="{height}" viewBox="0 0 {width} {height}">']
    axis_y = LANE_H * max(len(order), 1)
    for t in ticks(end):
        x = _x(t, end)
        out.append(f'<line class="grid" x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{axis_y}"/>')
        out.append(f'<text class="tick" x="{x:.1f}" y="{axis_y + 14}" text-anchor="middle">{_fmt(t)} s</text>')
    for i, lane in enumerate(order):
        out += _lane(segments(by_lane.get(lane, []), own_end), i * LANE_H, end, lane_name(lane))
    if not order:
        out.append(f'<text class="tick" x="4" y="{BAR_Y + 11}">no containers seen</text>')
    x_end = _x(own_end, end)
    out.append(f'<line class="end" x1="{x_end:.1f}" y1="0" x2="{x_end:.1f}" y2="{axis_y}">'
               f"<title>{escape(f'{target}: timeline ends at {_fmt(own_end)} s')}</title></line>")
    out.append("</svg>")
    return "\n".join(out)


def _outcome(value: str) -> str:
    return f'<span class="{escape(value.replace(" ", "-"))}">{escape(value)}</span>'


def spec_section(nodeid: str, index: int, targets: dict[str, Results], differs: bool) -> str:
    """A spec's heading and, per target, its outcome and timeline."""
    entries = {name: results.get(nodeid) for name, results in targets.items()}
    suffixes = {name: node_suffix(results) for name, results in targets.items()}
    order: list[Lane] = []
    for name, entry in entries.items():
        if entry is not None:
            order += [lane for lane in lanes(entry, suffixes[name]) if lane not in order]
    end = max((end_s(entry) for entry in entries.values() if entry is not None), default=0.0) or 1.0
    badge = ' <span class="differs">differs</span>' if differs else ""
    out = [f'<section id="spec-{index}">', f"<h2>{escape(nodeid.split('/')[-1])}{badge}</h2>"]
    for name, entry in entries.items():
        outcome = str(entry["outcome"]) if entry is not None else "not run"
        out.append(f"<h3>{escape(name)}: {_outcome(outcome)}</h3>")
        if entry is None:
            continue
        if entry.get("failure"):
            out.append(f'<p class="failure">{escape(str(entry["failure"]))}</p>')
        out.append(target_svg(name, entry, suffixes[name], order, end))
    out.append("</section>")
    return "\n".join(out)


def render(targets: dict[str, Results], differing: set[str] | None = None) -> str:
    """The whole page: a table of the specs' outcomes, then every spec's timelines."""
    differing = differing or set()
    names = list(targets)
    nodeids = sorted({n for results in targets.values() for n in results})
    head = "".join(f"<th>{escape(name)}</th>" for name in names)
    rows = []
    for i, nodeid in enumerate(nodeids):
        cells = "".join(f"<td>{_outcome(str(targets[t][nodeid]['outcome']) if nodeid in targets[t] else 'not run')}"
                        "</td>" for t in names)
        badge = ' <span class="differs">differs</span>' if nodeid in differing else ""
        rows.append(f'<tr><td><a href="#spec-{i}">{escape(nodeid.split("/")[-1])}</a>{badge}</td>{cells}</tr>')
    legend = ('<p class="legend"><span style="background:#e3a72f">waiting</span><span style="background:#4a7fc1">'
              'running</span><span style="background:#c44d4d">terminated</span><span style="background:#8c8c8c">'
              'completed</span><span style="background:#2ca02c">ready</span> a black mark: a restart (the new '
              "count beside it); a dashed line: where the target's timeline ends. Times in node seconds.</p>")
    title = f"Node conformance timelines: {', '.join(names)}"
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{escape(title)}</title>",
        f"<style>{CSS}</style></head><body>", f"<h1>{escape(title)}</h1>",
        f"<p>{len(nodeids)} specs; the reference is {escape(names[0]) if names else '-'}; "
        f"{len(differing)} specs differ.</p>", legend,
        f"<table><tr><th>spec</th>{head}</tr>", *rows, "</table>",
        *(spec_section(n, i, targets, n in differing) for i, n in enumerate(nodeids)),
        "</body></html>", "",
    ])
