"""The simulated process of a running container: its output, exit, OOM kill and stop, on the clock.

Everything a process does is a function of its behaviour, its start time, the memory limit and the
stop signals it received, so its future is *planned* rather than stepped: :meth:`Process.planned_exit`
computes the earliest of "exits by itself", "OOM-killed", "exits after SIGTERM" and "SIGKILL", and
one clock timer wakes the process at its next event (a due log line or the exit). Each wake writes
every log line due by then, with the timestamp the line was due at, so a virtual clock that jumps a
minute gets a minute of correctly stamped lines, and an emulator restarted after downtime catches up.

    exit reasons: exit 0 -> Completed, other codes -> Error, memory above the limit -> OOMKilled (137),
    SIGKILL after the stop timeout -> Error (137)

An exit by the process's own doing (``Exit.clean``: by itself, or after SIGTERM) is one after which it wrote
its termination message (the runtime does the writing); SIGKILL and the OOM killer leave no time for that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kubeharness.clock import Clock, Timer
from kubeharness.emulators.cri.behaviour import Behaviour
from kubeharness.emulators.cri.logs import ContainerLog, encode_line
from kubeharness.emulators.cri.model import Container

NS = 1_000_000_000
# Memory a process uses before it allocates anything (what a small static binary costs).
BASE_MEMORY_BYTES = 512 * 1024
# CPU a process has used by the time it runs (exec, loader, runtime start-up): a real one never shows 0.
START_CPU_NS = 2_000_000
# Persist log progress at most this often (clock time), so a crash repeats at most this much output.
PROGRESS_SAVE_NS = 10 * NS


@dataclass(frozen=True)
class Exit:
    """How and when a process ends."""

    at_ns: int
    code: int
    reason: str
    message: str = ""
    clean: bool = True  # the process ended it (by itself or after SIGTERM), not SIGKILL or the OOM killer


def exit_reason(code: int) -> str:
    return "Completed" if code == 0 else "Error"


class Process:
    """One running container's simulated process."""

    def __init__(
        self,
        container: Container,
        behaviour: Behaviour,
        clock: Clock,
        log: ContainerLog,
        on_exit: Callable[[Container, Exit], None],
        on_progress: Callable[[Container], None],
        min_tick_ns: int = 0,
    ) -> None:
        self.container = container
        self.behaviour = behaviour
        self._clock = clock
        self._log = log
        self._on_exit = on_exit
        self._on_progress = on_progress
        self._min_tick_ns = min_tick_ns
        self._timer: Timer | None = None
        self._last_save_ns = clock.now_ns()
        self.done = False

    # -- planning ---------------------------------------------------------------------------------

    @property
    def started_ns(self) -> int:
        return self.container.started_ns

    def planned_exit(self) -> Exit | None:
        """The earliest way this process ends, given what is known now."""
        b, c = self.behaviour, self.container
        candidates: list[Exit] = []
        if b.exit_after_ns is not None:
            candidates.append(Exit(self.started_ns + b.exit_after_ns, b.exit_code, exit_reason(b.exit_code)))
        limit = c.resources.memory_limit_in_bytes
        to_oom = b.running_ns_to_reach(max(0, limit - BASE_MEMORY_BYTES)) if limit > 0 else None
        if to_oom is not None:
            # memory above a limit lowered later is reclaimed by the OOM killer at the change, not before
            candidates.append(Exit(max(self.started_ns + to_oom, c.limit_changed_ns), 137, "OOMKilled", clean=False))
        if c.term_ns and not b.ignore_sigterm:
            if b.kind == "idle":
                code, delay = 143, 0
            else:
                code, delay = b.sigterm_exit_code, b.sigterm_delay_ns
            candidates.append(Exit(c.term_ns + delay, code, exit_reason(code)))
        if c.kill_ns:
            candidates.append(Exit(c.kill_ns, 137, "Error", clean=False))
        if not candidates:
            return None
        return min(candidates, key=lambda e: e.at_ns)

    def _line_due_ns(self, index: int) -> int:
        return self.started_ns + int(index * NS / self.behaviour.log_rate)

    def _next_line_ns(self) -> int | None:
        b = self.behaviour
        if b.log_rate <= 0 or (b.log_count is not None and self.container.lines_written >= b.log_count):
            return None
        return self._line_due_ns(self.container.lines_written)

    # -- running ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Begin at ``container.started_ns`` (already set); also used to resume after a restart."""
        b = self.behaviour
        if self.container.lines_written == 0 and b.startup_stderr:
            data = b"".join(encode_line(self.started_ns, "stderr", line.encode()) for line in b.startup_stderr)
            self._log.write(data)
        if b.log_rate > 0:
            self._log.open()
        else:
            self._log.touch()
        self.wake()

    def replan(self) -> None:
        """Re-evaluate after a signal or a resource change."""
        if not self.done:
            self.wake()

    def wake(self) -> None:
        """Write what is due, exit if due, otherwise sleep until the next event."""
        if self.done:
            return
        now = self._clock.now_ns()
        ending = self.planned_exit()
        # A process writes nothing at or after the instant it dies.
        horizon = min(now, ending.at_ns - 1) if ending else now
        self._write_due_lines(horizon)
        if ending is not None and ending.at_ns <= now:
            self._finish(ending)
            return
        if now - self._last_save_ns >= PROGRESS_SAVE_NS:
            self._last_save_ns = now
            self._on_progress(self.container)
        next_ns = self._next_line_ns()
        if ending is not None:
            next_ns = ending.at_ns if next_ns is None else min(next_ns, ending.at_ns)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if next_ns is not None:
            self._timer = self._clock.call_at(max(next_ns, now + self._min_tick_ns), self.wake)

    def _write_due_lines(self, horizon_ns: int) -> None:
        b, c = self.behaviour, self.container
        if b.log_rate <= 0:
            return
        chunks: list[bytes] = []
        limit = b.log_count if b.log_count is not None else None
        while limit is None or c.lines_written < limit:
            due = self._line_due_ns(c.lines_written)
            if due > horizon_ns:
                break
            number = c.lines_written + 1
            text = f"{b.log_text} {number}"
            if b.log_line_bytes > len(text):
                text += " " + "x" * (b.log_line_bytes - len(text) - 1)
            stream = b.log_stream if b.log_stream != "both" else ("stdout" if number % 2 else "stderr")
            chunks.append(encode_line(due, stream, text.encode()))
            c.lines_written = number
        if chunks:
            self._log.write(b"".join(chunks))

    def _finish(self, ending: Exit) -> None:
        self.done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._log.close()
        self._on_exit(self.container, ending)

    def stop_timers(self) -> None:
        """Forget the timer and the open file (emulator shutting down; the plan is kept in the record)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._log.close()

    def reopen_log(self) -> None:
        self._log.reopen()

    # -- what the process looks like from outside ------------------------------------------------

    def memory_bytes(self, now_ns: int) -> int:
        return BASE_MEMORY_BYTES + self.behaviour.memory_bytes_at(max(0, now_ns - self.started_ns))

    def cpu_usage_core_ns(self, now_ns: int) -> int:
        return START_CPU_NS + self.behaviour.cpu_millicores * max(0, now_ns - self.started_ns) // 1000

    def writable_bytes(self) -> int:
        return int(self.behaviour.disk_mib * 1024 * 1024)
