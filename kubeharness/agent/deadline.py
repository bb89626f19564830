"""``activeDeadlineSeconds``: a pod active on the node longer than its deadline is killed and Failed, as
kubelet's ``active_deadline.go`` decides it.

The deadline counts from the pod's ``startTime`` (when the agent first reported a status for it). Once it
has passed, the pod's phase is Failed with reason ``DeadlineExceeded``, a Normal event of that reason is
recorded, every container is killed and nothing is started again. :func:`remaining_ns` is pure; the agent
wakes the pod's worker when the deadline falls due.
"""

from __future__ import annotations

from kubeharness.agent.pod.model import Pod
from kubeharness.clock import seconds_to_ns

REASON = "DeadlineExceeded"
MESSAGE = "Pod was active on the node longer than the specified deadline"


def remaining_ns(pod: Pod, start_ns: int | None, now_ns: int) -> int | None:
    """Nanoseconds until the pod's deadline (<= 0: past it); None when it has none or has not started."""
    deadline = pod.spec.active_deadline_seconds
    if deadline is None or start_ns is None:
        return None
    return start_ns + seconds_to_ns(deadline) - now_ns
