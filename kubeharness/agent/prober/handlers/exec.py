"""The ``exec`` handler, as kubelet's ``pkg/probe/exec`` with its CRI command runner: ExecSync with the
probe's timeout; exit 0 succeeds, another exit fails; the output is stdout then stderr, at most 10 KiB
(kubelet's ``maxReadLength``).

A timeout is a failure, ``command "sleep 5" timed out``: the runtime enforces the probe's timeout and
answers DEADLINE_EXCEEDED (as containerd does). kubelet gives the call the runtime request timeout
(2 minutes) on top of the probe's, for the runtime to clean up, so :func:`within` here waits
``timeoutSeconds`` plus the client's request timeout on the agent's clock: the runtime's own answer comes
first, and a runtime that hangs is cut off where kubelet would cut it off.

Any other ExecSync error (the container is gone or not running, the runtime is unavailable, the command
cannot start) means the probe could not run: :class:`ProbeError`, which the prober retries (kubelet's
``maxProbeRetries``, 3) and then throws away, as kubelet's worker does with a probe that errored.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from kubeharness.agent.prober.handlers.texts import go_quote, rpc_error
from kubeharness.agent.prober.outcome import Outcome, ProbeError, ProbeResult
from kubeharness.agent.prober.timeout import ProbeTimeout, within
from kubeharness.agent.runtime.client import RuntimeClient
from kubeharness.clock import Clock

MAX_OUTPUT_BYTES = 10 * 1024  # kubelet's maxReadLength


async def exec_command(clock: Clock, client: RuntimeClient, *, container_id: str, command: Sequence[str],
                       timeout_s: float) -> Outcome:
    """Run ``command`` in the container: SUCCESS on exit 0, FAILURE on another exit or a timeout."""
    cmd = list(command)
    timed_out = Outcome(ProbeResult.FAILURE, f"command {go_quote(' '.join(cmd))} timed out")
    try:
        reply = await within(clock, timeout_s + client.timeout_s, client.exec_sync(container_id, cmd, timeout_s))
    except ProbeTimeout:
        return timed_out
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return timed_out
        raise ProbeError(rpc_error(err)) from None
    output = (reply.stdout + reply.stderr)[:MAX_OUTPUT_BYTES].decode("utf-8", "replace")
    return Outcome(ProbeResult.SUCCESS if reply.exit_code == 0 else ProbeResult.FAILURE, output)
