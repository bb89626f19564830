"""The scheduler inside one program: jobs (processes) as generators, stepped until each one blocks.

A program's main process, its background jobs (``cmd &``) and the stages of its pipelines are
:class:`Proc` objects, each a generator of blocks (:mod:`.io`). :meth:`Scheduler.run` steps every job
whose block is satisfied, then yields one :class:`~.io.Wait` to the driver with the earliest clock
deadline among them, and delivers the signals the driver sends back (:meth:`Scheduler.deliver`) with
the dispositions of a real process: ignored, trapped (the handler runs when the foreground command ends,
or at once during ``wait``), or the default action, which kills, except for PID 1 which the kernel
protects from signals it does not handle.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from kubeharness.emulators.cri.shell.io import (
    FOREVER,
    PIPE_CAPACITY,
    PREEMPT,
    SIGNALS,
    Block,
    BrokenPipe,
    Interrupt,
    JobWait,
    PipeRead,
    PipeWrite,
    Signal,
    Sleep,
    Wait,
)

if TYPE_CHECKING:
    from kubeharness.emulators.cri.shell.interp import Shell

Job = Generator[Block, Any, int]
Program = Generator[Wait, "Signal | None", int]
KILL = SIGNALS["KILL"]
# Commands a job may run without waiting before it yields to the driver (a busy loop must not hang it).
STEP_BUDGET = 5000
# Signals whose default action is to do nothing.
_DEFAULT_IGNORED = frozenset({SIGNALS["CHLD"], SIGNALS["CONT"]})


class ProcKilled(BaseException):
    """Raised inside a job that killed itself (``kill $$``); ends the job with ``status``."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Proc:
    """One simulated process."""

    __slots__ = ("block", "done", "gen", "on_exit", "pid", "resume", "sh", "status")

    def __init__(self, pid: int, sh: Shell, gen: Job) -> None:
        self.pid = pid
        self.sh = sh  # the shell state this process runs (traps, fds): a process image
        self.gen = gen
        self.block: Block | None = None
        self.resume: object = None
        self.done = False
        self.status = 0
        self.on_exit: Callable[[], None] | None = None


class Scheduler:
    """Runs the processes of one program on the clock."""

    def __init__(self, now_ns: Callable[[], int], report: Callable[[str], None], first_pid: int) -> None:
        self.now_ns = now_ns
        self.report = report  # writes an internal error to stderr and calls machine.missing
        self.procs: list[Proc] = []
        self.next_pid = first_pid + 1
        self.current: Proc | None = None
        self.budget = STEP_BUDGET
        self.preempted = False
        self.cmd_cache: dict[tuple[str, str], Any] = {}

    def alloc_pid(self) -> int:
        pid = self.next_pid
        self.next_pid += 1
        return pid

    def spawn(self, pid: int, sh: Shell, gen: Job) -> Proc:
        proc = Proc(pid, sh, gen)
        self.procs.append(proc)
        return proc

    def find(self, pid: int) -> Proc | None:
        for proc in self.procs:
            if proc.pid == pid and not proc.done:
                return proc
        return None

    # -- stepping -----------------------------------------------------------------------------------

    def _satisfied(self, block: Block | None) -> bool:
        if block is None:
            return True
        if isinstance(block, Sleep):
            return self.now_ns() >= block.until_ns
        if isinstance(block, PipeRead):
            return bool(block.pipe.buf) or block.pipe.writers <= 0
        if isinstance(block, PipeWrite):
            return len(block.pipe.buf) < PIPE_CAPACITY or block.pipe.readers <= 0
        if isinstance(block, JobWait):
            return all(p.done for p in block.procs)
        return False  # FOREVER, PREEMPT (until the driver resumes us)

    def _step(self, proc: Proc) -> None:
        value, proc.resume = proc.resume, None
        proc.block = None
        self.current = proc
        gen = proc.gen
        try:
            while True:
                try:
                    block = gen.send(value)
                except StopIteration as stop:
                    self._finish(proc, stop.value if isinstance(stop.value, int) else 0)
                    return
                except ProcKilled as killed:
                    self._finish(proc, killed.status)
                    return
                except BrokenPipe:
                    self._finish(proc, 128 + SIGNALS["PIPE"])
                    return
                except Exception as exc:  # a bug here must not take the emulator down
                    self.report(f"internal error: {type(exc).__name__}: {exc}")
                    self._finish(proc, 2)
                    return
                value = None
                if block is PREEMPT:
                    self.preempted = True
                    proc.block = block
                    return
                if not self._satisfied(block):
                    proc.block = block
                    return
        finally:
            self.current = None

    def _finish(self, proc: Proc, status: int) -> None:
        proc.done = True
        proc.status = status
        proc.block = None
        if proc.on_exit is not None:
            proc.on_exit()
            proc.on_exit = None

    def kill(self, proc: Proc, status: int) -> None:
        """End ``proc`` now with ``status`` (death by a signal)."""
        if proc.done:
            return
        if proc is self.current:
            raise ProcKilled(status)
        proc.gen.close()
        self._finish(proc, status)

    def run(self, main: Proc) -> Program:
        """The program: step jobs, yield waits, deliver signals, until the main process ends."""
        try:
            while True:
                progressed = True
                while progressed and not main.done:
                    progressed = False
                    for proc in self.procs:
                        if not proc.done and proc.block is not PREEMPT and self._satisfied(proc.block):
                            self._step(proc)
                            progressed = True
                    if progressed:
                        self.procs = [p for p in self.procs if not p.done or p is main]
                if main.done:
                    return main.status
                deadline: int | None = None
                if self.preempted:
                    deadline = self.now_ns()
                else:
                    for proc in self.procs:
                        block = proc.block
                        if type(block) is Sleep and (deadline is None or block.until_ns < deadline):
                            deadline = block.until_ns
                signal = yield Wait(deadline)
                if self.preempted:
                    self.preempted = False
                    self.budget = STEP_BUDGET
                    for proc in self.procs:
                        if proc.block is PREEMPT:
                            proc.block = None
                if signal is not None:
                    self.deliver(main, SIGNALS.get(signal.name.upper().removeprefix("SIG"), SIGNALS["TERM"]))
                    if main.done:
                        return main.status
        finally:
            for proc in self.procs:
                if not proc.done:
                    proc.gen.close()
                    proc.done = True

    # -- signals ------------------------------------------------------------------------------------

    def deliver(self, proc: Proc, signum: int) -> None:
        """Deliver ``signum`` to ``proc`` as the kernel would."""
        if proc.done:
            return
        if signum == KILL:
            if proc.pid != 1:
                self.kill(proc, 128 + KILL)
            return
        action = proc.sh.traps.get(signum)
        if action == "":
            return
        if action is None:
            if proc.pid != 1 and signum not in _DEFAULT_IGNORED:
                self.kill(proc, 128 + signum)
            return
        proc.sh.pending.append(signum)
        block = proc.block
        if isinstance(block, JobWait) and block.interruptible:
            proc.resume = Interrupt(signum)
            proc.block = None


__all__ = ["FOREVER", "Job", "Proc", "ProcKilled", "Program", "Scheduler"]
