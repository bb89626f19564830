"""Pod addresses for sandboxes when no CNI plugin is configured: a pool over the configured CIDR.

The network address and the first host (the gateway a bridge would own) are never handed out; the
lowest free address is, so a restarted emulator given the same sandboxes hands out the same next IP.
"""

from __future__ import annotations

import heapq
import ipaddress

from kubeharness.errors import ResourceExhausted


class IpPool:
    def __init__(self, cidr: str) -> None:
        self._network = ipaddress.ip_network(cidr, strict=False)
        self._first = int(self._network.network_address) + 2
        self._last = int(self._network.broadcast_address) - (1 if self._network.version == 4 else 0)
        self._next = self._first
        self._freed: list[int] = []
        self._used: set[int] = set()

    def allocate(self) -> str:
        while self._freed:
            value = heapq.heappop(self._freed)
            if value not in self._used:
                return self._take(value)
        while self._next <= self._last:
            value = self._next
            self._next += 1
            if value not in self._used:
                return self._take(value)
        raise ResourceExhausted(f"no free pod address left in {self._network}")

    def _take(self, value: int) -> str:
        self._used.add(value)
        return str(ipaddress.ip_address(value))

    def reserve(self, ip: str) -> None:
        """Mark an address as taken (when reloading saved sandboxes)."""
        try:
            value = int(ipaddress.ip_address(ip))
        except ValueError:
            return
        if value in ipaddress_range(self._first, self._last):
            self._used.add(value)

    def release(self, ip: str) -> None:
        try:
            value = int(ipaddress.ip_address(ip))
        except ValueError:
            return
        if value in self._used:
            self._used.discard(value)
            heapq.heappush(self._freed, value)


def ipaddress_range(first: int, last: int) -> range:
    return range(first, last + 1)
