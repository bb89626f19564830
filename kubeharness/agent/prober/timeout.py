"""A probe's timeout on the agent's clock, so that on a virtual clock a hung probe times out exactly when
the test moves time past ``timeoutSeconds``, and on the real clock after that many seconds.

asyncio's own timeouts run on the event loop's clock, which a virtual clock does not move; this races the
probe against ``clock.sleep``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from kubeharness.clock import Clock

T = TypeVar("T")


class ProbeTimeout(Exception):
    """The probe did not finish within its timeout."""


async def within(clock: Clock, seconds: float, work: Awaitable[T]) -> T:
    """``await work``, or cancel it and raise :class:`ProbeTimeout` once ``seconds`` have passed on ``clock``."""
    task = asyncio.ensure_future(work)
    timer = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait((task, timer), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():  # also when we are cancelled ourselves
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        timer.cancel()
    if task.cancelled():
        raise ProbeTimeout(f"timed out after {seconds:g}s")
    return task.result()
