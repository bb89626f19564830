"""Kubelet's crash-loop back-off: how long a failed container waits before it is started again.

The rules of ``client-go/util/flowcontrol/backoff.go`` as kubelet uses them (``doBackOff`` in
``kuberuntime_manager.go``), with every time passed in (no clock is read here):

- One entry per (pod uid, container name, spec hash): a changed spec starts from scratch.
- The first restart after an exit is immediate and records a back-off of ``initial`` (10 s). While
  ``now - finished < backoff`` (``finished`` being when the last instance exited) the container is in
  back-off; the next restart doubles the back-off, up to ``max`` (300 s): 10, 20, 40, 80, 160, 300, 300 s.
- An entry is forgotten when the container finished more than ``reset`` (2 x max, 10 minutes, by
  default) after the entry was last updated, i.e. when it ran that long: the next restart is immediate
  again and starts over at ``initial``. :meth:`Backoff.gc` drops entries idle for ``reset``; kubelet runs it
  in housekeeping.

The sync loop asks :meth:`Backoff.in_backoff` (via ``runtime.actions``) before starting a container that has
an exited instance, and calls :meth:`Backoff.next` when it does start it.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubeharness.agent.pod.model import Container, Pod
from kubeharness.clock import seconds_to_ns

BackoffKey = tuple[str, str, str]  # (pod uid, container name, container spec hash)

INITIAL_S = 10.0
MAX_S = 300.0


def backoff_key(pod: Pod, container: Container) -> BackoffKey:
    return (pod.uid, container.name, container.spec_hash)


@dataclass
class _Entry:
    backoff_ns: int
    last_update_ns: int


class Backoff:
    """Per-container exponential back-off; times are nanoseconds on the agent's clock."""

    def __init__(self, initial_s: float = INITIAL_S, max_s: float = MAX_S, reset_s: float | None = None) -> None:
        if initial_s <= 0 or max_s < initial_s:
            raise ValueError(f"need 0 < initial ({initial_s}) <= max ({max_s})")
        self.initial_ns = seconds_to_ns(initial_s)
        self.max_ns = seconds_to_ns(max_s)
        self.reset_ns = seconds_to_ns(reset_s) if reset_s is not None else 2 * self.max_ns
        self._entries: dict[BackoffKey, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def _live(self, key: BackoffKey, event_ns: int) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None or event_ns - entry.last_update_ns > self.reset_ns:
            return None
        return entry

    def get_ns(self, key: BackoffKey) -> int:
        """The current back-off duration for ``key`` (0 when there is none)."""
        entry = self._entries.get(key)
        return entry.backoff_ns if entry else 0

    def in_backoff(self, key: BackoffKey, finished_ns: int, now_ns: int) -> bool:
        """True while ``now`` is within the back-off window that began when the last instance finished."""
        return self.remaining_ns(key, finished_ns, now_ns) > 0

    def remaining_ns(self, key: BackoffKey, finished_ns: int, now_ns: int) -> int:
        """How long until the container may start again (0 when it may start now)."""
        entry = self._live(key, finished_ns)
        if entry is None:
            return 0
        return max(0, finished_ns + entry.backoff_ns - now_ns)

    def next(self, key: BackoffKey, finished_ns: int, now_ns: int) -> int:
        """Record a restart at ``now``: start at ``initial`` or double, capped at ``max``. Returns the new back-off."""
        entry = self._live(key, finished_ns)
        if entry is None:
            entry = self._entries[key] = _Entry(self.initial_ns, now_ns)
        else:
            entry.backoff_ns = min(entry.backoff_ns * 2, self.max_ns)
            entry.last_update_ns = now_ns
        return entry.backoff_ns

    def reset(self, key: BackoffKey) -> None:
        self._entries.pop(key, None)

    def forget_pod(self, pod_uid: str) -> None:
        """Drop every entry of a pod (when the pod is gone for good)."""
        for key in [k for k in self._entries if k[0] == pod_uid]:
            del self._entries[key]

    def gc(self, now_ns: int) -> int:
        """Drop entries not updated for ``reset``; returns how many were dropped."""
        stale = [k for k, e in self._entries.items() if now_ns - e.last_update_ns > self.reset_ns]
        for key in stale:
            del self._entries[key]
        return len(stale)


def go_duration(ns: int) -> str:
    """A duration the way Go prints one for whole seconds and above (``10s``, ``1m20s``, ``5m0s``)."""
    seconds = ns // 1_000_000_000
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
