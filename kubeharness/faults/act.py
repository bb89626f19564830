"""Carrying out a fault decision on a gRPC call: the part every gRPC emulator and the CRI proxy share.

The engine only decides; :func:`perform` and :func:`perform_stream` do what it decided around the real
work of one call (``work`` for a unary call, ``open_stream`` for a server-streaming one):

===========  =====================================================  ==========================================
action       unary call                                             server-streaming call
===========  =====================================================  ==========================================
``error``    answer the status; the work is not done                end with the status before any message
``delay``    sleep on the clock before (or after) the work          before: hold the opening of the stream;
                                                                    after: hold every message that long
``hang``     never answer, until the caller gives up (deadline,     stay open and deliver nothing
             cancellation) and gRPC cancels the handler
``partial``  do the work, then answer the status anyway (what a     deliver the first message, then end with
             runtime does when it fails half-way and leaks)         the status
``crash``    exit the process (``exit`` with the code, or           the same
             ``sigkill``) so that it must be restarted
===========  =====================================================  ==========================================

CNI-only actions never reach here: plan validation keeps them to ``where: cni``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

from kubeharness.clock import Clock
from kubeharness.errors import InjectedFault
from kubeharness.faults.engine import Decision
from kubeharness.faults.plan import Crash, Delay, Error, Hang, Partial

log = logging.getLogger(__name__)


def crash(decision: Decision, action: Crash) -> NoReturn:
    """End this process at once, as the rule says: no cleanup, no graceful stop (that is the point)."""
    log.error("fault rule %r: crashing the process (%s)", decision.rule, action.how)
    sys.stdout.flush()
    sys.stderr.flush()
    if action.how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(action.exit_code)


def _delay_seconds(decision: Decision, action: Delay) -> float:
    return decision.delay_seconds if decision.delay_seconds is not None else action.seconds


async def perform(decision: Decision, work: Callable[[], Awaitable[Any]], clock: Clock) -> Any:
    """Carry out ``decision`` around the unary call ``work``; returns its response or raises the fault."""
    action = decision.action
    if isinstance(action, Error):
        raise InjectedFault(action.code, action.message)
    if isinstance(action, Delay):
        seconds = _delay_seconds(decision, action)
        if action.when == "before":
            await clock.sleep(seconds)
            return await work()
        response = await work()
        await clock.sleep(seconds)
        return response
    if isinstance(action, Hang):
        await asyncio.Event().wait()  # until the caller gives up and gRPC cancels this handler
    if isinstance(action, Partial):
        await work()
        raise InjectedFault(action.code, action.message)
    if isinstance(action, Crash):
        crash(decision, action)
    return await work()  # not reached for validated plans: other actions are CNI-only


async def perform_stream(
    decision: Decision, open_stream: Callable[[], AsyncIterator[Any]], clock: Clock
) -> AsyncIterator[Any]:
    """Carry out ``decision`` on the server stream that ``open_stream`` starts; yields what reaches the client."""
    action = decision.action
    if isinstance(action, Error):
        raise InjectedFault(action.code, action.message)
    if isinstance(action, Hang):
        await asyncio.Event().wait()
    if isinstance(action, Crash):
        crash(decision, action)
    if isinstance(action, Delay) and action.when == "before":
        await clock.sleep(_delay_seconds(decision, action))
    stream = open_stream()
    try:
        async for item in stream:
            if isinstance(action, Delay) and action.when == "after":
                await clock.sleep(_delay_seconds(decision, action))
            yield item
            if isinstance(action, Partial):
                raise InjectedFault(action.code, action.message)
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
