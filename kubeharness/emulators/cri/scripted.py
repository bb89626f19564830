"""Containers whose command line runs in the shell interpreter: busybox one-liners on a virtual filesystem.

A :class:`ScriptedProcess` is a :class:`~kubeharness.emulators.cri.process.Process` whose future is not
planned from a behaviour but stepped: the interpreter (:mod:`.shell`) is a generator that yields the
clock time it waits for, and each clock timer resumes it. Its output goes to the container log line
by line, stamped with the clock time at which the line was completed, as containerd's log copier does.
SIGTERM from StopContainer is delivered to the program (a ``trap`` runs, PID 1 without one ignores it);
SIGKILL after the stop timeout and everything else a Process does (log reopen, events, stats) are the
base class's.

A loop that never waits (``while true; do :; done``) is preempted by the interpreter every few
thousand commands; each such slice is charged :data:`BUSY_SLICE_NS` of clock time (and of CPU usage),
so virtual time moves on and a busy container shows a full core in its stats.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from kubeharness.clock import Clock
from kubeharness.emulators.cri.behaviour import Behaviour
from kubeharness.emulators.cri.logs import ContainerLog, encode_line
from kubeharness.emulators.cri.model import Container
from kubeharness.emulators.cri.process import START_CPU_NS, Exit, Process, exit_reason
from kubeharness.emulators.cri.shell.interp import Machine, start
from kubeharness.emulators.cri.shell.io import Signal, Wait

if TYPE_CHECKING:
    from kubeharness.emulators.cri.shell.sched import Program

log = logging.getLogger(__name__)

BUSY_SLICE_NS = 250_000_000
# An unterminated line is flushed as a partial ("P") log line once it reaches the CRI's 16 KiB limit.
MAX_PENDING_LINE = 16 * 1024


class LineWriter:
    """Splits a stream's output into log lines stamped with the clock time each line was completed."""

    def __init__(self, stream: str, log_file: ContainerLog, now_ns: Callable[[], int]) -> None:
        self.stream = stream
        self._log = log_file
        self._now_ns = now_ns
        self._pending = b""

    def write(self, data: bytes) -> None:
        if not data:
            return
        buffered = self._pending + data
        *lines, rest = buffered.split(b"\n")
        if lines:
            now = self._now_ns()
            self._log.write(b"".join(encode_line(now, self.stream, line) for line in lines))
        self._pending = rest
        while len(self._pending) >= MAX_PENDING_LINE:  # encode_line splits it into P chunks
            chunk, self._pending = self._pending[:MAX_PENDING_LINE], self._pending[MAX_PENDING_LINE:]
            self._log.write(encode_line(self._now_ns(), self.stream, chunk).replace(b" F ", b" P ", 1))

    def flush(self) -> None:
        """At exit: what is left without a newline becomes a last full line."""
        if self._pending:
            self._log.write(encode_line(self._now_ns(), self.stream, self._pending))
            self._pending = b""


class ScriptedProcess(Process):
    """A running container whose command line the shell interpreter executes."""

    def __init__(
        self,
        container: Container,
        behaviour: Behaviour,
        clock: Clock,
        log_file: ContainerLog,
        on_exit: Callable[[Container, Exit], None],
        on_progress: Callable[[Container], None],
        argv: list[str],
        machine: Callable[[Callable[[bytes], None], Callable[[bytes], None]], Machine],
        min_tick_ns: int = 0,
    ) -> None:
        super().__init__(container, behaviour, clock, log_file, on_exit, on_progress, min_tick_ns)
        self._argv = argv
        self._make_machine = machine
        self.machine: Machine | None = None  # the main process's machine once started (ps reads its cmdline)
        self._stdout = LineWriter("stdout", log_file, clock.now_ns)
        self._stderr = LineWriter("stderr", log_file, clock.now_ns)
        self._program: Program | None = None
        self._wait_until: int | None = None  # when the program wants to run again (None: only a signal)
        self._ended: Exit | None = None  # how the program ended by itself
        self._term_delivered = False
        self._busy_ns = 0

    def start(self) -> None:
        self._log.open()
        self.machine = self._make_machine(self._stdout.write, self._stderr.write)
        self._program = start(self._argv, self.machine)
        self._resume(None)
        self.wake()

    def _resume(self, value: Signal | None) -> None:
        assert self._program is not None
        try:
            wait: Wait = self._program.send(value)
        except StopIteration as stop:
            self._program = None
            self._stdout.flush()
            self._stderr.flush()
            code = int(stop.value) & 0xFF
            self._ended = Exit(self._clock.now_ns(), code, exit_reason(code))
            self._wait_until = None
            return
        now = self._clock.now_ns()
        until = wait.until_ns
        if until is not None and until <= now:  # preempted in a loop that never waits
            self._busy_ns += BUSY_SLICE_NS
            until = now + BUSY_SLICE_NS
        self._wait_until = until

    def planned_exit(self) -> Exit | None:
        planned = super().planned_exit()  # SIGKILL at the end of the stop timeout
        if self._ended is not None and (planned is None or self._ended.at_ns <= planned.at_ns):
            return self._ended
        return planned

    def _next_line_ns(self) -> int | None:
        return self._wait_until if self._program is not None else None

    def wake(self) -> None:
        if self.done:
            return
        now = self._clock.now_ns()
        c = self.container
        if self._program is not None and c.term_ns and not self._term_delivered and c.term_ns <= now:
            self._term_delivered = True
            self._resume(Signal("TERM"))
        if c.kill_ns and c.kill_ns <= now and self._program is not None:
            self._program.close()  # SIGKILL: nothing more runs
            self._program = None
        elif self._program is not None and self._wait_until is not None and self._wait_until <= now:
            self._resume(None)
        super().wake()

    def stop_timers(self) -> None:
        super().stop_timers()
        if self._program is not None:
            self._program.close()
            self._program = None

    def cpu_usage_core_ns(self, now_ns: int) -> int:
        return START_CPU_NS + self._busy_ns
