"""The containers' timelines in the node suite's observations, as data: lanes, segments, state sequences.

An observation entry of the node suite (see :mod:`kubeharness.conformance.node.plugin`) carries
``timeline``, a :class:`~kubeharness.conformance.node.target.Sample` per change of a container (in node
seconds since its node started), and ``node_time``, ``[node seconds, wall seconds]`` the spec took. This
module turns them into what :mod:`kubeharness.conformance.node.report` compares between targets (each
container's sequence of distinct states and its last restart count, times ignored) and what
:mod:`kubeharness.conformance.node.timeline_html` draws (a segment from one change to the next). Pure
functions only.

A lane is one container of one pod. Pods are named by the node (``<manifest name>-<node name>``), and the
node's name differs between targets, so a lane is keyed by the pod's name without the node's name: the
end that all the target's pod names share, from its first ``-`` (see :func:`node_suffix`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from kubeharness.conformance.node.target import Sample

Results = dict[str, dict[str, Any]]  # nodeid -> {outcome, observed, target, timeline?, node_time?, failure?}
Lane = tuple[str, str]  # (pod without the node's name, container)


@dataclass(frozen=True)
class Segment:
    """A container in one state (and readiness, restart count) from ``start_s`` to ``end_s`` node seconds."""

    start_s: float
    end_s: float
    state: str
    ready: bool
    restarts: int

    @property
    def kind(self) -> str:
        """``waiting``, ``running``, ``terminated`` (or ``unknown``): the state without its reason."""
        return self.state.split(":", 1)[0]

    @property
    def reason(self) -> str:
        return self.state.split(":", 1)[1] if ":" in self.state else ""


def samples(entry: dict[str, Any]) -> list[Sample]:
    """The entry's timeline, in time order (a sample per change of a container)."""
    got = [Sample(float(s["t"]), str(s["pod"]), str(s["container"]), str(s["state"]), bool(s["ready"]),
                  int(s["restarts"])) for s in entry.get("timeline", [])]
    return sorted(got, key=lambda s: s.t)  # stable: samples of one read keep their order


def end_s(entry: dict[str, Any]) -> float:
    """Where the entry's timeline ends: the node seconds the spec covered, or else its last change."""
    last = max((s.t for s in samples(entry)), default=0.0)
    node_time = entry.get("node_time")
    return max(last, float(node_time[0])) if node_time else last


def _common_suffix(names: Iterable[str]) -> str:
    names = list(names)
    if not names:
        return ""
    shortest = min(names, key=len)
    n = 0
    while n < len(shortest) and all(name[-1 - n] == shortest[-1 - n] for name in names):
        n += 1
    return shortest[len(shortest) - n:]


def node_suffix(results: Results) -> str:
    """``-<node name>`` that every pod name of the target ends with ("" unless two pods tell it)."""
    pods = {s.pod for entry in results.values() for s in samples(entry)}
    if len(pods) < 2:
        return ""  # one name alone does not say where the node's name begins
    common = _common_suffix(pods)
    cut = common.find("-")
    suffix = common[cut:] if cut >= 0 else ""
    return suffix if all(len(pod) > len(suffix) for pod in pods) else ""


def lanes(entry: dict[str, Any], suffix: str = "") -> dict[Lane, list[Sample]]:
    """The entry's samples by lane, the lanes in the order their containers first appear."""
    found: dict[Lane, list[Sample]] = {}
    for s in samples(entry):
        pod = s.pod.removesuffix(suffix) if suffix else s.pod
        found.setdefault((pod, s.container), []).append(s)
    return found


def lane_name(lane: Lane) -> str:
    return f"{lane[0]}/{lane[1]}"


def segments(lane_samples: list[Sample], end: float) -> list[Segment]:
    """A segment per sample: from its time to the next sample's, the last one to ``end``."""
    result = []
    for s, after in zip(lane_samples, [*lane_samples[1:], None], strict=False):
        stop = after.t if after is not None else max(end, s.t)
        result.append(Segment(s.t, stop, s.state, s.ready, s.restarts))
    return result


def runs(parts: list[Segment], key: Callable[[Segment], Hashable]) -> list[tuple[float, float, Segment]]:
    """Consecutive segments with the same ``key`` joined: (start, end, the first of them)."""
    joined: list[tuple[float, float, Segment]] = []
    for seg in parts:
        if joined and key(joined[-1][2]) == key(seg):
            start, _, first = joined[-1]
            joined[-1] = (start, seg.end_s, first)
        else:
            joined.append((seg.start_s, seg.end_s, seg))
    return joined


def state_sequence(lane_samples: list[Sample]) -> list[str]:
    """The container's distinct states in order (a change of readiness or restarts alone is no new state)."""
    seq: list[str] = []
    for s in lane_samples:
        if not seq or seq[-1] != s.state:
            seq.append(s.state)
    return seq


def marked_sequence(lane_samples: list[Sample], end: float, brief_s: float) -> list[tuple[str, bool]]:
    """The state sequence, each state marked brief if it lasted under ``brief_s`` node seconds (the last
    never is): a brief state is one that a target reading its pods less often, or later, may not see."""
    parts = runs(segments(lane_samples, end), key=lambda seg: seg.state)
    return [(seg.state, stop - start < brief_s and i < len(parts) - 1) for i, (start, stop, seg) in enumerate(parts)]


def reconcilable(a: list[tuple[str, bool]], b: list[tuple[str, bool]]) -> bool:
    """Whether two marked sequences tell the same story: they align with brief states left over, on
    either side, except that the two sides must not leave out states of one kind (waiting, running,
    terminated) between the same two aligned states: ``terminated:Error`` on one node where the other has
    ``terminated:OOMKilled`` is a difference however briefly each lasted. A node on the real clock read
    twice a second never sees the milliseconds of ``waiting:ContainerCreating`` that a virtual clock
    shows, and a virtual clock read every second may miss a container that ran for one; neither is a
    difference."""
    n, m = len(a), len(b)

    def kind(state: str) -> str:
        return state.split(":", 1)[0]

    @functools.cache
    def fits(i: int, j: int, left_a: frozenset[str], left_b: frozenset[str]) -> bool:
        # left_a, left_b: the kinds of the states each side left out since the last aligned pair
        if i == n and j == m:
            return True
        if i < n and j < m and a[i][0] == b[j][0] and fits(i + 1, j + 1, frozenset(), frozenset()):
            return True
        if i < n and a[i][1] and kind(a[i][0]) not in left_b and fits(i + 1, j, left_a | {kind(a[i][0])}, left_b):
            return True
        return j < m and b[j][1] and kind(b[j][0]) not in left_a and fits(i, j + 1, left_a, left_b | {kind(b[j][0])})

    return fits(0, 0, frozenset(), frozenset())


def sequences(entry: dict[str, Any], suffix: str = "") -> dict[Lane, tuple[list[str], int]]:
    """Per lane: its state sequence and its last restart count."""
    return {lane: (state_sequence(got), got[-1].restarts) for lane, got in lanes(entry, suffix).items()}


def marked_sequences(entry: dict[str, Any], brief_s: float, suffix: str = "") -> dict[Lane, list[tuple[str, bool]]]:
    """Per lane: its :func:`marked_sequence`."""
    end = end_s(entry)
    return {lane: marked_sequence(got, end, brief_s) for lane, got in lanes(entry, suffix).items()}


def first_divergence(a: list[str], b: list[str]) -> int | None:
    """The first index where the sequences differ (the shorter one's length if one begins the other)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def compress(seq: list[str], max_period: int = 4) -> str:
    """The sequence as text, repeated cycles folded: ``a → (b → c) x3 → d``."""
    parts: list[str] = []
    i = 0
    while i < len(seq):
        best_period, best_count = 1, 1
        for period in range(1, max_period + 1):
            count = 1
            while i + (count + 1) * period <= len(seq) \
                    and seq[i + count * period: i + (count + 1) * period] == seq[i: i + period]:
                count += 1
            if count > 1 and period * count > best_period * best_count:
                best_period, best_count = period, count
        cycle = seq[i: i + best_period]
        if best_count > 1:
            inner = " → ".join(cycle)
            parts.append(f"({inner}) x{best_count}" if best_period > 1 else f"{inner} x{best_count}")
        else:
            parts.append(cycle[0])
        i += best_period * best_count
    return " → ".join(parts) if parts else "(none)"


def change_times(lane_samples: list[Sample]) -> list[float]:
    """When each state of :func:`state_sequence` began."""
    times: list[float] = []
    last = None
    for s in lane_samples:
        if s.state != last:
            times.append(s.t)
            last = s.state
    return times


@dataclass(frozen=True)
class Drift:
    """The largest time apart of one state change that two timelines share: ``lane``'s state ``index``."""

    lane: Lane
    index: int
    state: str
    reference_s: float
    value_s: float


def drift(reference: dict[Lane, list[Sample]], other: dict[Lane, list[Sample]]) -> Drift | None:
    """Of the state changes both timelines went through alike (same lane, same states up to it), the one
    furthest apart in time; None if they share none."""
    worst: Drift | None = None
    for lane, ref_samples in reference.items():
        if lane not in other:
            continue
        seq_a, seq_b = state_sequence(ref_samples), state_sequence(other[lane])
        shared = first_divergence(seq_a, seq_b)
        shared = len(seq_a) if shared is None else shared
        for i, (ta, tb) in enumerate(zip(change_times(ref_samples)[:shared], change_times(other[lane]), strict=False)):
            if worst is None or abs(tb - ta) > abs(worst.value_s - worst.reference_s):
                worst = Drift(lane, i, seq_a[i], ta, tb)
    return worst
