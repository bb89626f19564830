"""The crash-and-restart supervisor: backoff, command lines, and ``kubeharness cri serve --restart-on-crash``.

The emulator runs as a real child process of a real supervisor process; a fault rule crashes it (exit or
SIGKILL) in the middle of a call, and a real gRPC client on the socket sees UNAVAILABLE until the
restarted emulator answers again, with its state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from kubeharness.supervise import Backoff, Supervisor, describe_status, shell_status, supervised_argv
from kubeharness.testing.processes import children, is_gone, wait_child, wait_gone
from kubeharness.wire.cri import api_pb2 as api
from kubeharness.wire.cri import api_pb2_grpc as api_grpc
from tests.conftest import code_of

DEADLINE = 30.0  # seconds any poll below may take before the test fails
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]

# --- backoff, statuses and command lines --------------------------------------------------------------------


def test_backoff_doubles_while_the_child_crashes_soon_and_is_capped() -> None:
    backoff = Backoff(first=0.1, factor=2.0, cap=5.0, healthy_after=10.0)
    delays: list[float] = []
    previous: float | None = None
    for _ in range(9):
        previous = backoff.next_delay(previous, ran_for=0.5)
        delays.append(previous)
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])


def test_backoff_starts_afresh_after_a_child_that_ran_long_enough() -> None:
    backoff = Backoff(first=0.1, factor=2.0, cap=5.0, healthy_after=10.0)
    assert backoff.next_delay(5.0, ran_for=10.0) == 0.1
    assert backoff.next_delay(5.0, ran_for=9.9) == 5.0
    assert backoff.next_delay(None, ran_for=0.0) == 0.1


def test_statuses_read_like_a_shell() -> None:
    assert describe_status(3) == "exited with status 3"
    assert describe_status(-signal.SIGKILL) == "was killed by SIGKILL"
    assert shell_status(-signal.SIGKILL) == 137
    assert shell_status(3) == 3


def test_supervised_argv_drops_the_supervisor_options_in_every_spelling() -> None:
    drop = {"--restart-on-crash": 0, "--max-restarts": 1}
    argv = ["-v", "cri", "serve", "--restart-on-crash", "--socket", "s", "--max-restarts", "3", "--state-dir", "d"]
    assert supervised_argv(argv, drop) == ["-v", "cri", "serve", "--socket", "s", "--state-dir", "d"]
    assert supervised_argv(["serve", "--max-restarts=3", "--restart", "--max", "2"], drop) == ["serve"]
    # values and what follows "--" are not options; "--re" would be a prefix of both (argparse refuses it)
    assert supervised_argv(["--socket", "--x", "--", "--restart-on-crash"], drop) == [
        "--socket", "--x", "--", "--restart-on-crash"]
    assert supervised_argv(["--re", "--"], {"--restart-on-crash": 0, "--rest": 0}) == ["--re", "--"]


# --- the generic supervisor with small Python children ------------------------------------------------------


def child(tmp_path: Path, body: str) -> list[str]:
    """A Python child that appends a line to runs.txt every time it starts, then runs ``body``."""
    script = tmp_path / "child.py"
    script.write_text(
        "import os, signal, sys, time, pathlib\n"
        f"runs = pathlib.Path({str(tmp_path / 'runs.txt')!r})\n"
        "with runs.open('a') as f: f.write(f'{os.getpid()}\\n')\n"
        "count = len(runs.read_text().split())\n" + body)
    return [sys.executable, str(script)]


def runs(tmp_path: Path) -> list[int]:
    return [int(pid) for pid in (tmp_path / "runs.txt").read_text().split()]


FAST = Backoff(first=0.01, cap=0.05)


async def test_a_child_that_exits_0_is_not_restarted(tmp_path: Path) -> None:
    supervisor = Supervisor(child(tmp_path, "sys.exit(0)\n"), backoff=FAST)
    assert await asyncio.wait_for(supervisor.run(), DEADLINE) == 0
    assert len(runs(tmp_path)) == 1 and supervisor.restarts == 0


async def test_crashes_are_restarted_until_max_restarts_and_the_last_status_is_returned(tmp_path: Path) -> None:
    supervisor = Supervisor(child(tmp_path, "sys.exit(3)\n"), backoff=FAST, max_restarts=2)
    assert await asyncio.wait_for(supervisor.run(), DEADLINE) == 3
    assert len(runs(tmp_path)) == 3 and supervisor.restarts == 2


async def test_death_by_a_signal_is_a_crash(tmp_path: Path) -> None:
    body = "if count == 1: os.kill(os.getpid(), signal.SIGKILL)\nsys.exit(0)\n"
    supervisor = Supervisor(child(tmp_path, body), backoff=FAST)
    assert await asyncio.wait_for(supervisor.run(), DEADLINE) == 0
    assert len(runs(tmp_path)) == 2 and supervisor.restarts == 1


async def test_a_final_status_is_not_restarted(tmp_path: Path) -> None:
    supervisor = Supervisor(child(tmp_path, "sys.exit(2)\n"), backoff=FAST, final_statuses=(2,))
    assert await asyncio.wait_for(supervisor.run(), DEADLINE) == 2
    assert len(runs(tmp_path)) == 1


async def test_a_stop_during_the_backoff_restarts_nothing(tmp_path: Path) -> None:
    supervisor = Supervisor(child(tmp_path, "sys.exit(5)\n"), backoff=Backoff(first=600))
    task = asyncio.ensure_future(supervisor.run(forward_signals=False))
    deadline = time.monotonic() + DEADLINE
    while supervisor.restarts == 0:  # the child crashed and the supervisor waits out its backoff
        assert time.monotonic() < deadline and not task.done()
        await asyncio.sleep(0.01)
    supervisor.request_stop()
    assert await asyncio.wait_for(task, DEADLINE) == 5
    assert len(runs(tmp_path)) == 1


async def test_a_child_that_ignores_the_stop_is_killed_after_the_grace(tmp_path: Path) -> None:
    body = "signal.signal(signal.SIGTERM, signal.SIG_IGN)\npathlib.Path(str(runs) + '.ready').touch()\ntime.sleep(60)\n"
    supervisor = Supervisor(child(tmp_path, body), backoff=FAST, stop_grace=0.2)
    task = asyncio.ensure_future(supervisor.run(forward_signals=False))
    deadline = time.monotonic() + DEADLINE
    while not (tmp_path / "runs.txt.ready").exists():
        assert time.monotonic() < deadline and not task.done()
        await asyncio.sleep(0.01)
    supervisor.request_stop()
    assert await asyncio.wait_for(task, DEADLINE) == 128 + signal.SIGKILL
    assert len(runs(tmp_path)) == 1


# --- kubeharness cri serve --restart-on-crash ----------------------------------------------------------------


class Served:
    """``kubeharness cri serve --restart-on-crash`` as a subprocess, its output in a file."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.socket = tmp_path / "cri.sock"
        self.state = tmp_path / "state"
        self.output = tmp_path / "output.txt"
        self.process: asyncio.subprocess.Process | None = None
        self.pids: set[int] = set()  # every emulator PID seen, to check that none is left

    async def start(self, *extra: str) -> None:
        cmd = [sys.executable, "-m", "kubeharness.cli", "cri", "serve", "--socket", str(self.socket),
               "--state-dir", str(self.state), "--fault-log", str(self.tmp_path / "fired.jsonl"),
               "--restart-on-crash", *extra]
        with self.output.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(*cmd, stdout=out, stderr=out)

    @property
    def supervisor(self) -> asyncio.subprocess.Process:
        assert self.process is not None
        return self.process

    async def child(self, other_than: int | None = None) -> int:
        pid = await asyncio.to_thread(wait_child, self.supervisor.pid, DEADLINE, other_than)
        self.pids.add(pid)
        return pid

    def text(self) -> str:
        return self.output.read_text()

    async def close(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await asyncio.wait_for(self.process.wait(), DEADLINE)
        for pid in self.pids:  # only if the supervisor failed its job: leave nothing behind
            if not is_gone(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    s = Served(tmp_path)
    try:
        yield s
    finally:
        await s.close()


def sandbox(name: str) -> api.RunPodSandboxRequest:
    return api.RunPodSandboxRequest(config=api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=name, namespace="default", uid=f"uid-{name}")))


def fired_rules(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["rule"] for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("how", ["exit", "sigkill"])
async def test_a_crashed_emulator_is_restarted_on_the_same_socket_with_its_state(
        served: Served, tmp_path: Path, how: str) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"""
rules:
  - name: die
    where: cri
    method: RunPodSandbox
    when: {{nth: 2}}
    action: {{crash: {{how: {how}{", exit_code: 3" if how == "exit" else ""}}}}}
  - name: slow
    where: cri
    method: ImageFsInfo
    action: {{delay: {{seconds: 600, when: before}}}}
""")
    await served.start("--faults", str(plan))
    first_pid = await served.child()
    async with grpc.aio.insecure_channel(f"unix://{served.socket}", options=CHANNEL_OPTIONS) as channel:
        runtime, images = api_grpc.RuntimeServiceStub(channel), api_grpc.ImageServiceStub(channel)
        await runtime.Version(api.VersionRequest(), wait_for_ready=True, timeout=DEADLINE)
        sid = (await runtime.RunPodSandbox(sandbox("first"), timeout=DEADLINE)).pod_sandbox_id
        # a call in flight when the emulator dies: it waits inside the emulator on its delay rule
        in_flight = asyncio.ensure_future(code_of(images.ImageFsInfo(api.ImageFsInfoRequest(), timeout=DEADLINE)))
        deadline = time.monotonic() + DEADLINE
        while "slow" not in fired_rules(tmp_path / "fired.jsonl"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        # the second RunPodSandbox crashes the emulator: both calls see UNAVAILABLE
        assert await code_of(runtime.RunPodSandbox(sandbox("second"), timeout=DEADLINE)) == grpc.StatusCode.UNAVAILABLE
        crashed = time.monotonic()
        assert await asyncio.wait_for(in_flight, DEADLINE) == grpc.StatusCode.UNAVAILABLE
        assert await asyncio.to_thread(wait_gone, first_pid, DEADLINE)
        # until the restarted emulator answers, every call on the same channel is UNAVAILABLE
        seen: set[grpc.StatusCode] = set()
        while (code := await code_of(runtime.Version(api.VersionRequest(), timeout=5))) != grpc.StatusCode.OK:
            seen.add(code)
            assert time.monotonic() - crashed < DEADLINE, f"no answer after the crash; saw {seen}"
            await asyncio.sleep(0.02)
        assert seen <= {grpc.StatusCode.UNAVAILABLE}
        # the state survived: the first sandbox is there, the crashed call created nothing
        listed = await runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=DEADLINE)
        assert [item.id for item in listed.items] == [sid]
    second_pid = await served.child(other_than=first_pid)
    assert second_pid != first_pid
    status = "exited with status 3" if how == "exit" else "was killed by SIGKILL"
    assert f"CRI emulator (pid {first_pid}) {status}" in served.text()
    assert "restart 1 in 0.1 s" in served.text()
    # SIGTERM to the supervisor stops the emulator and both are gone
    served.supervisor.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(served.supervisor.wait(), DEADLINE) == 0
    assert await asyncio.to_thread(wait_gone, second_pid, DEADLINE)
    assert children(served.supervisor.pid) == []
    assert not served.socket.exists()


async def test_an_emulator_that_stops_on_purpose_is_not_restarted(served: Served) -> None:
    await served.start()
    pid = await served.child()
    async with grpc.aio.insecure_channel(f"unix://{served.socket}", options=CHANNEL_OPTIONS) as channel:
        await api_grpc.RuntimeServiceStub(channel).Version(api.VersionRequest(), wait_for_ready=True,
                                                            timeout=DEADLINE)
    os.kill(pid, signal.SIGTERM)  # the emulator itself ends cleanly, with status 0
    assert await asyncio.wait_for(served.supervisor.wait(), DEADLINE) == 0
    assert f"CRI emulator (pid {pid}) exited with status 0; not restarting it" in served.text()
    assert "restart 1" not in served.text()


async def test_max_restarts_is_honoured(served: Served, tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("rules:\n  - {name: die, where: cri, method: Version, action: {crash: {exit_code: 4}}}\n")
    await served.start("--faults", str(plan), "--max-restarts", "1")
    pids = [await served.child()]
    deadline = time.monotonic() + DEADLINE
    # every Version crashes the emulator that answers it: the first crash is restarted, the second is not
    while served.supervisor.returncode is None:
        assert time.monotonic() < deadline, served.text()
        async with grpc.aio.insecure_channel(f"unix://{served.socket}", options=CHANNEL_OPTIONS) as channel:
            stub = api_grpc.RuntimeServiceStub(channel)
            with contextlib.suppress(grpc.aio.AioRpcError):
                await stub.Version(api.VersionRequest(), wait_for_ready=True, timeout=1)
        if is_gone(pids[-1]) and served.supervisor.returncode is None:
            with contextlib.suppress(TimeoutError):
                pids.append(await asyncio.to_thread(wait_child, served.supervisor.pid, 1.0, pids[-1]))
    assert await served.supervisor.wait() == 4
    served.pids.update(pids)
    assert len(set(pids)) == 2 and all(is_gone(pid) for pid in pids)
    assert "restart 1 of 1 in 0.1 s" in served.text()
    assert "giving up after 1 restart(s)" in served.text()


async def test_a_bad_plan_is_not_restarted_for_ever(served: Served, tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("rules:\n  - {name: x, where: cri, method: RunPodSandbx}\n")
    await served.start("--faults", str(plan))
    assert await asyncio.wait_for(served.supervisor.wait(), DEADLINE) == 2
    assert "line 2" in served.text() and "not restarting it" in served.text() and "restart 1" not in served.text()


def test_max_restarts_needs_restart_on_crash(tmp_path: Path) -> None:
    from kubeharness.cli import main

    assert main(["cri", "serve", "--socket", str(tmp_path / "s"), "--state-dir", str(tmp_path), "--max-restarts",
                 "2"]) == 2
