"""Restart a crashed daemon: run a child command and start it again whenever it dies of a crash.

``kubeharness cri serve --restart-on-crash`` runs the emulator under a :class:`Supervisor`, the way a node's
init system restarts a container runtime that died, so that clients see the runtime go away (UNAVAILABLE)
and come back with its saved state. Any command gets such a flag by re-running itself without it:
``run_supervised([sys.executable, "-m", "kubeharness.cli", *supervised_argv(argv, drop={...})])``.

- The child's exit status 0 means it stopped on purpose: the supervisor ends with 0.
- A nonzero status or death by a signal is a crash: the child is started again with the same command line
  after a backoff (:class:`Backoff`: 0.1 s, doubling up to 5 s while the child keeps crashing soon after it
  started, back to 0.1 s once it has run for 10 s), at most ``max_restarts`` times in all if given; each
  restart is logged (warning) with the status and the count. Giving up ends with the child's last status.
- A status in ``final_statuses`` is not restarted either (as systemd's RestartPreventExitStatus): the
  ``kubeharness`` commands exit with 2 on bad input (a configuration or plan, a state directory or socket in
  use), which no restart fixes, so :func:`run_supervised` gives up on 2.
- SIGTERM and SIGINT to the supervisor are passed on to the child; the supervisor then waits for it (and
  SIGKILLs it after ``stop_grace`` seconds) and ends with its status, without restarting it.

The child inherits stdin, stdout, stderr and the environment. Statuses are shell-style: an exit code, or
128 + N for death by signal N. If the supervisor itself is killed with SIGKILL, the child stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubeharness.clock import NS_PER_SECOND, Clock, RealClock

log = logging.getLogger(__name__)

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass(frozen=True)
class Backoff:
    """How long to wait before a restart, given the previous wait and how long the child ran."""

    first: float = 0.1  # seconds before the first restart, and after a child that ran long enough
    factor: float = 2.0  # each crash soon after starting multiplies the wait by this ...
    cap: float = 5.0  # ... up to this
    healthy_after: float = 10.0  # a child that ran this long before crashing starts the series afresh

    def next_delay(self, previous: float | None, ran_for: float) -> float:
        """The wait before the next start; ``previous`` is the last wait (None before the first restart)."""
        if previous is None or ran_for >= self.healthy_after:
            return self.first
        return min(self.cap, previous * self.factor)


def describe_status(returncode: int) -> str:
    """``3`` -> "exited with status 3"; ``-9`` (asyncio's death by signal 9) -> "was killed by SIGKILL"."""
    if returncode >= 0:
        return f"exited with status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"was killed by {name}"


def shell_status(returncode: int) -> int:
    """An asyncio return code as a process exit status: death by signal N is 128 + N."""
    return returncode if returncode >= 0 else 128 - returncode


def supervised_argv(argv: Sequence[str], drop: Mapping[str, int]) -> list[str]:
    """``argv`` without the supervisor's own options, for the child's command line.

    ``drop`` maps each long option to the number of values it takes (``{"--restart-on-crash": 0,
    "--max-restarts": 1}``); ``--opt value`` and ``--opt=value`` forms are removed, and so are unique
    prefixes such as ``--restart`` that argparse accepts for them (``argv`` must be one argparse has
    accepted). Nothing after ``--`` is touched.
    """
    out: list[str] = []
    skip = 0
    for index, token in enumerate(argv):
        if skip:
            skip -= 1
            continue
        if token == "--":
            out.extend(argv[index:])
            break
        name, has_value, _ = token.partition("=")
        matched = [flag for flag in drop if name.startswith("--") and len(name) > 2 and flag.startswith(name)]
        if len(matched) != 1:
            out.append(token)
            continue
        skip = 0 if has_value else drop[matched[0]]
    return out


class Supervisor:
    """Runs ``argv`` until it stops on purpose, restarting it after crashes; see the module text."""

    def __init__(self, argv: Sequence[str], *, max_restarts: int | None = None, backoff: Backoff | None = None,
                 clock: Clock | None = None, stop_grace: float = 30.0, name: str | None = None,
                 final_statuses: Collection[int] = ()) -> None:
        if not argv:
            raise ValueError("supervise: no command to run")
        self.argv = list(argv)
        self.max_restarts = max_restarts
        self.backoff = backoff or Backoff()
        self.clock = clock or RealClock()
        self.stop_grace = stop_grace
        self.name = name or self.argv[0]
        self.final_statuses = frozenset(final_statuses)
        self.restarts = 0
        self.child: asyncio.subprocess.Process | None = None
        self._stop = asyncio.Event()
        self._stop_signal: signal.Signals | None = None

    def request_stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Pass ``sig`` on to the running child and restart it no more (what SIGTERM/SIGINT do)."""
        if self._stop_signal is None:
            self._stop_signal = sig
        self._stop.set()
        self._signal_child(sig)

    def _signal_child(self, sig: signal.Signals) -> None:
        child = self.child
        if child is not None and child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(sig)

    async def run(self, forward_signals: bool = True) -> int:
        """Supervise until the child stops on purpose, a stop is requested or restarts run out: its status.

        With ``forward_signals`` (the main thread only) SIGTERM and SIGINT call :meth:`request_stop` meanwhile.
        """
        loop = asyncio.get_running_loop()
        handled = FORWARDED_SIGNALS if forward_signals else ()
        for sig in handled:
            loop.add_signal_handler(sig, self.request_stop, sig)
        try:
            return await self._loop()
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)

    async def _loop(self) -> int:
        delay: float | None = None
        while True:
            started = self.clock.now_ns()
            self.child = await asyncio.create_subprocess_exec(*self.argv)
            if self._stop_signal is not None:  # a stop asked for while the child was being started
                self._signal_child(self._stop_signal)
            returncode = await self._wait_child(self.child)
            ran_for = (self.clock.now_ns() - started) / NS_PER_SECOND
            what = f"{self.name} (pid {self.child.pid}) {describe_status(returncode)}"
            if returncode == 0 or self._stop.is_set():
                log.info("%s; not restarting it", what)
                return shell_status(returncode)
            if returncode in self.final_statuses:
                log.error("%s; not restarting it: a restart does not help with that status", what)
                return returncode
            if self.max_restarts is not None and self.restarts >= self.max_restarts:
                log.error("%s; giving up after %d restart(s)", what, self.restarts)
                return shell_status(returncode)
            delay = self.backoff.next_delay(delay, ran_for)
            self.restarts += 1
            limit = f" of {self.max_restarts}" if self.max_restarts is not None else ""
            log.warning("%s after %.1f s; restart %d%s in %.1f s", what, ran_for, self.restarts, limit, delay)
            if await self._stopped_within(delay):
                log.info("stop requested; not restarting %s", self.name)
                return shell_status(returncode)

    async def _wait_child(self, child: asyncio.subprocess.Process) -> int:
        waiting: asyncio.Future[int] = asyncio.ensure_future(child.wait())
        # once a stop is requested (and passed on), the child has stop_grace seconds to end
        if not await _done_before(waiting, self._stop.wait()) and \
                not await _done_before(waiting, self.clock.sleep(self.stop_grace)):
            log.error("%s (pid %d) ignored the stop for %.0f s: SIGKILL", self.name, child.pid, self.stop_grace)
            self._signal_child(signal.SIGKILL)
        return await waiting

    async def _stopped_within(self, seconds: float) -> bool:
        """Wait ``seconds`` on the clock; True as soon as a stop is requested."""
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            return await _done_before(stopping, self.clock.sleep(seconds))
        finally:
            stopping.cancel()


async def _done_before(future: asyncio.Future[Any], other: Coroutine[Any, Any, Any]) -> bool:
    """Wait until ``future`` is done (True) or ``other`` has finished first (False); ``other`` is cancelled."""
    racer = asyncio.ensure_future(other)
    try:
        await asyncio.wait({future, racer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        racer.cancel()
    return future.done()


USAGE_ERROR = 2
"""What ``kubeharness`` exits with on bad input (see ``cli.main``)."""


def run_supervised(argv: Sequence[str], *, max_restarts: int | None = None, name: str | None = None,
                   final_statuses: Collection[int] = (USAGE_ERROR,)) -> int:
    """Supervise a ``kubeharness`` command line ``argv`` in a fresh event loop: the status to exit with."""
    supervisor = Supervisor(argv, max_restarts=max_restarts, name=name, final_statuses=final_statuses)
    return asyncio.run(supervisor.run())
