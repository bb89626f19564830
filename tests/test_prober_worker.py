"""The probe worker's rules (kubelet's prober/worker.go) step by step and in its loop, on a virtual clock.

The worker reads its pod through a view and runs its probe through a function; here both are scripted, so
each rule is shown on its own: initial results, thresholds, initial delay, startup gating, hold after a
liveness failure, a stopped container, deletion, a terminal pod, thrown-away errors, the ticker and the
first probe's spread.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field, replace

import pytest

from kubeharness.agent.pod.model import ExecAction, Probe
from kubeharness.agent.prober.results import Result, Results, Update
from kubeharness.agent.prober.worker import LIVENESS, READINESS, STARTUP, ContainerView, PodView, Worker
from kubeharness.clock import NS_PER_SECOND, VirtualClock

S, F = Result.SUCCESS, Result.FAILURE


@dataclass
class Script:
    """The pod view and the probe answers a worker sees."""

    clock: VirtualClock
    view: PodView | None = None
    answers: list[Result | None] = field(default_factory=list)
    probed: list[tuple[str, str]] = field(default_factory=list)

    async def run_probe(self, kind: str, container_id: str) -> Result | None:
        self.probed.append((kind, container_id))
        return self.answers.pop(0) if self.answers else S


def running(container_id: str = "c1", *, started: bool = True, started_at_ns: int = 0) -> PodView:
    return PodView(terminal=False, deleting=False, restart_never=False, pod_ip="127.0.0.1",
                   container=ContainerView(container_id, True, started_at_ns, False, started))


def make(kind: str, *, clock: VirtualClock | None = None, **probe: int) -> tuple[Worker, Script, Results]:
    clock = clock or VirtualClock()
    script = Script(clock, view=running(started_at_ns=clock.now_ns() - 3600 * NS_PER_SECOND))
    results = Results(kind)
    worker = Worker(kind, "uid-1", "app", Probe(ExecAction(("true",)), **probe), results=results,
                    view=lambda: script.view, run_probe=script.run_probe, clock=clock)
    return worker, script, results


def drain(results: Results) -> list[Update]:
    updates = []
    while not results.updates.empty():
        updates.append(results.updates.get_nowait())
    return updates


@pytest.mark.parametrize(("kind", "initial"), [(READINESS, F), (LIVENESS, S), (STARTUP, Result.UNKNOWN)])
async def test_a_new_container_starts_with_the_kind_s_initial_result(kind: str, initial: Result) -> None:
    worker, script, results = make(kind)
    script.view = running(started=kind != STARTUP)
    script.answers = [initial] if initial is not Result.UNKNOWN else [F]
    worker.probe = replace(worker.probe, failure_threshold=5)
    assert await worker.step()
    assert results.get("c1") is initial


@pytest.mark.parametrize(("kind", "answers", "threshold", "want"), [
    # (kind, probe answers, failure_threshold / success_threshold, the cached result after each step)
    (LIVENESS, [F, F, F], 3, [S, S, F]),
    (LIVENESS, [F, F, S, F, F, F], 3, [S, S, S, S, S, F]),
    (LIVENESS, [F], 1, [F]),
    (READINESS, [S, S, F, S, S], 2, [F, S, S, S, S]),  # successThreshold 2 (readiness only)
    (READINESS, [S, F, S, F], 2, [F, F, F, F]),
])
async def test_a_result_takes_effect_after_threshold_identical_results_in_a_row(
    kind: str, answers: list[Result], threshold: int, want: list[Result]
) -> None:
    if kind == LIVENESS:
        worker, script, results = make(kind, failure_threshold=threshold)
    else:
        worker, script, results = make(kind, success_threshold=threshold)
    script.answers = list(answers)
    seen = []
    for _ in answers:
        assert await worker.step()
        seen.append(results.get("c1"))
    assert seen == want


async def test_updates_fire_only_when_the_result_changes() -> None:
    worker, script, results = make(READINESS)
    script.answers = [S, S, S, F, F, F, S]
    for _ in range(7):
        await worker.step()
    assert [u.result for u in drain(results)] == [F, S, F, S]  # initial F, then each change


async def test_no_probe_before_the_initial_delay() -> None:
    clock = VirtualClock()
    worker, script, _ = make(LIVENESS, clock=clock, initial_delay_seconds=5)
    script.view = running(started_at_ns=clock.now_ns())
    await clock.advance(4.9)
    assert await worker.step()
    assert script.probed == []
    await clock.advance(0.1)
    assert await worker.step()
    assert script.probed == [(LIVENESS, "c1")]


async def test_startup_gates_the_other_probes_and_stops_once_started() -> None:
    live, live_script, _ = make(LIVENESS)
    startup, startup_script, startup_results = make(STARTUP)
    live_script.view = startup_script.view = running(started=False)
    assert await live.step() and await startup.step()
    assert live_script.probed == [] and startup_script.probed == [(STARTUP, "c1")]
    assert startup_results.get("c1") is S
    live_script.view = startup_script.view = running(started=True)
    assert await live.step() and await startup.step()
    assert live_script.probed == [(LIVENESS, "c1")]
    assert startup_script.probed == [(STARTUP, "c1")]  # no second startup probe


async def test_a_liveness_failure_holds_the_worker_until_a_new_container() -> None:
    worker, script, results = make(LIVENESS, failure_threshold=1)
    script.answers = [F, F, F]
    await worker.step()
    assert results.get("c1") is F
    await worker.step()
    await worker.step()
    assert script.probed == [(LIVENESS, "c1")]  # on hold: no exec into a container being killed
    script.view = running("c2")
    await worker.step()
    assert results.get("c1") is None  # the old container's entry is gone
    assert results.get("c2") is F  # the new one's first probe answered F (threshold 1)
    assert script.probed == [(LIVENESS, "c1"), (LIVENESS, "c2")]


async def test_a_stopped_container_reads_as_failure_and_the_worker_ends_if_it_will_not_restart() -> None:
    worker, script, results = make(READINESS)
    await worker.step()
    stopped = PodView(False, False, False, "", ContainerView("c1", False, 0, True, False))
    script.view = stopped
    assert await worker.step()  # it will be restarted: keep going
    assert results.get("c1") is F
    script.view = replace(stopped, restart_never=True)
    assert not await worker.step()
    script.view = replace(stopped, restart_never=True, container=ContainerView("c1", False, 0, False, False))
    assert await worker.step()  # created, not yet run: it may still start


@pytest.mark.parametrize(("kind", "last"), [(READINESS, F), (LIVENESS, S), (STARTUP, S)])
async def test_a_pod_being_deleted_ends_the_worker_with_a_quiet_last_result(kind: str, last: Result) -> None:
    worker, script, results = make(kind)
    script.view = running(started=kind != STARTUP)
    script.answers = [S if kind == READINESS else F]
    await worker.step()
    script.view = replace(script.view, deleting=True)
    assert not await worker.step()
    assert results.get("c1") is last
    assert len(script.probed) == 1


async def test_a_terminal_pod_or_no_view_or_no_container_id() -> None:
    worker, script, results = make(LIVENESS)
    script.view = None
    assert await worker.step()
    script.view = replace(running(), container=None)
    assert await worker.step()
    script.view = running("")
    assert await worker.step()
    assert script.probed == [] and len(results) == 0
    script.view = replace(running(), terminal=True)
    assert not await worker.step()


async def test_an_errored_probe_is_thrown_away() -> None:
    worker, script, results = make(LIVENESS, failure_threshold=2)
    script.answers = [F, None, None, F]
    for _ in range(3):
        await worker.step()
    assert results.get("c1") is S
    await worker.step()
    assert results.get("c1") is F  # the errors did not break the run of failures


async def test_the_loop_probes_once_a_period_and_at_once_when_triggered() -> None:
    clock = VirtualClock()
    worker, script, results = make(READINESS, clock=clock, period_seconds=10)
    task = asyncio.ensure_future(worker.run())
    try:
        await clock.advance(0)
        assert len(script.probed) == 1  # no spread: the agent did not start just now
        await clock.advance(95)
        assert len(script.probed) == 10  # at 0, 10, ..., 90
        worker.request()
        await clock.advance(0)
        assert len(script.probed) == 11
        await clock.advance(5)
        assert len(script.probed) == 12  # the ticker kept its phase: 100
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert results.get("c1") is None  # a stopped worker removes its result


async def test_a_fresh_agent_spreads_the_first_probe_over_one_period() -> None:
    firsts = []
    for seed in range(8):
        clock = VirtualClock()
        worker, script, _ = make(LIVENESS, clock=clock, period_seconds=10)
        worker.agent_started_ns = clock.now_ns()
        worker.rng = random.Random(seed)
        task = asyncio.ensure_future(worker.run())
        for tenth in range(101):
            if script.probed:
                break
            await clock.advance(0.1 if tenth else 0)
        firsts.append(tenth)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert all(1 <= t <= 100 for t in firsts)
    assert len(set(firsts)) > 4  # spread, not all at once
