"""The container event stream behind GetContainerEvents: one queue per subscriber.

Publishing never blocks a handler. A subscriber that falls more than ``buffer`` events behind is cut
off with RESOURCE_EXHAUSTED (and can resubscribe and relist), rather than letting memory grow
without bound or silently losing events in the middle of a stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from kubeharness.errors import ResourceExhausted
from kubeharness.wire.cri import api_pb2 as cri

_OVERFLOW = object()


class EventHub:
    def __init__(self, buffer: int) -> None:
        self._buffer = buffer
        self._queues: set[asyncio.Queue[object]] = set()

    @property
    def subscribers(self) -> int:
        return len(self._queues)

    def publish(self, event: cri.ContainerEventResponse) -> None:
        for queue in list(self._queues):
            if queue.qsize() >= self._buffer:
                self._queues.discard(queue)
                queue.put_nowait(_OVERFLOW)
            else:
                queue.put_nowait(event)

    async def subscribe(self) -> AsyncIterator[cri.ContainerEventResponse]:
        queue: asyncio.Queue[object] = asyncio.Queue()
        self._queues.add(queue)
        try:
            while True:
                item = await queue.get()
                if item is _OVERFLOW:
                    raise ResourceExhausted(
                        f"container event subscriber fell more than {self._buffer} events behind; resubscribe"
                    )
                assert isinstance(item, cri.ContainerEventResponse)
                yield item
        finally:
            self._queues.discard(queue)
