"""Address ranges as the host-local IPAM plugin reads them, and the order in which addresses are handed out.

A range is ``{subnet, rangeStart, rangeEnd, gateway}``: by default it spans the subnet's hosts (for IPv4
without the network and broadcast addresses) and the gateway is the subnet's first host, which is never
handed out. A range set is a list of ranges; an attachment gets one address from each range set. Within
a set, allocation continues after the address reserved last and wraps around, as host-local does, so
an address just released is not reused at once.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping

from kubeharness.emulators.cni.errors import INVALID_CONFIG, UNSUPPORTED_FIELD, PluginError

_RANGE_KEYS = ("subnet", "rangeStart", "rangeEnd", "gateway")


def _address(text: object, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if not isinstance(text, str):
        raise PluginError(INVALID_CONFIG, f"{what} must be a string, got {text!r}")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise PluginError(INVALID_CONFIG, f"{what} {text!r} is not an IP address") from None


class Range:
    """One range: the subnet, the first and last address to hand out (as integers) and the gateway."""

    __slots__ = ("end", "gateway", "network", "start")

    def __init__(self, spec: object, where: str) -> None:
        if not isinstance(spec, Mapping):
            raise PluginError(INVALID_CONFIG, f"{where} must be an object with a subnet, got {spec!r}")
        for key in spec:
            if key not in _RANGE_KEYS:
                raise PluginError(UNSUPPORTED_FIELD, f"unknown field {key!r} in {where}",
                                  f"a range takes {', '.join(_RANGE_KEYS)}")
        subnet = spec.get("subnet")
        if not isinstance(subnet, str):
            raise PluginError(INVALID_CONFIG, f"{where} needs a subnet (a CIDR such as 10.22.0.0/16)")
        try:
            self.network = ipaddress.ip_network(subnet, strict=False)
        except ValueError:
            raise PluginError(INVALID_CONFIG, f"{where}: subnet {subnet!r} is not a CIDR") from None
        net = self.network
        first, last = int(net.network_address), int(net.broadcast_address)
        if net.version == 4:
            if net.prefixlen > 30:
                raise PluginError(INVALID_CONFIG, f"{where}: subnet {subnet} is too small to allocate from")
            last -= 1
        elif net.prefixlen > 126:
            raise PluginError(INVALID_CONFIG, f"{where}: subnet {subnet} is too small to allocate from")
        first += 1
        self.start, self.end = first, last
        for key in ("rangeStart", "rangeEnd"):
            if spec.get(key) is not None:
                value = _address(spec[key], f"{where}.{key}")
                if value not in net:
                    raise PluginError(INVALID_CONFIG, f"{where}.{key} {value} is outside the subnet {net}")
                if key == "rangeStart":
                    self.start = int(value)
                else:
                    self.end = int(value)
        if self.start > self.end:
            raise PluginError(INVALID_CONFIG, f"{where}: rangeStart is after rangeEnd")
        gateway = _address(spec["gateway"], f"{where}.gateway") if spec.get("gateway") is not None else None
        if gateway is not None and gateway not in net:
            raise PluginError(INVALID_CONFIG, f"{where}.gateway {gateway} is outside the subnet {net}")
        self.gateway = int(gateway) if gateway is not None else first

    def address(self, value: int) -> str:
        return str(ipaddress.ip_address(value) if self.network.version == 4 else ipaddress.IPv6Address(value))

    def size(self) -> int:
        """How many addresses the range hands out (the gateway excluded)."""
        return self.end - self.start + 1 - (1 if self.start <= self.gateway <= self.end else 0)

    def holds(self, value: int) -> bool:
        return self.start <= value <= self.end


class RangeSet:
    """The ranges one address of an attachment comes from."""

    __slots__ = ("ranges",)

    def __init__(self, spec: object, where: str) -> None:
        if not isinstance(spec, list) or not spec:
            raise PluginError(INVALID_CONFIG, f"{where} must be a non-empty list of ranges")
        self.ranges = [Range(item, f"{where}[{index}]") for index, item in enumerate(spec)]
        if len({r.network.version for r in self.ranges}) > 1:
            raise PluginError(INVALID_CONFIG, f"{where} mixes IPv4 and IPv6 ranges")

    def find(self, address: str) -> Range | None:
        """The range that holds ``address`` (a plain address, no prefix), if any."""
        try:
            value = ipaddress.ip_address(address)
        except ValueError:
            return None
        return next((r for r in self.ranges if r.network.version == value.version and r.holds(int(value))), None)

    def candidates(self, last: str | None) -> Iterator[tuple[Range, str]]:
        """Every address of the set once, in allocation order: after ``last``, wrapping around."""
        begin_range, begin = 0, self.ranges[0].start
        found = self.find(last) if last else None
        if found is not None and last is not None:
            begin_range = self.ranges.index(found)
            begin = int(ipaddress.ip_address(last)) + 1
            if begin > found.end:
                begin_range = (begin_range + 1) % len(self.ranges)
                begin = self.ranges[begin_range].start
        order = [*range(begin_range, len(self.ranges)), *range(0, begin_range + 1)]
        for step, index in enumerate(order):
            one = self.ranges[index]
            if step == 0:
                low, high = begin, one.end
            elif step == len(order) - 1:
                low, high = one.start, begin - 1 if index == begin_range else one.end
            else:
                low, high = one.start, one.end
            for value in range(low, high + 1):
                if value != one.gateway:
                    yield one, one.address(value)

    def size(self) -> int:
        return sum(r.size() for r in self.ranges)


def parse_range_sets(spec: object, where: str) -> list[RangeSet]:
    if not isinstance(spec, list) or not spec:
        raise PluginError(INVALID_CONFIG, f"{where} must be a non-empty list of range sets")
    return [RangeSet(item, f"{where}[{index}]") for index, item in enumerate(spec)]
