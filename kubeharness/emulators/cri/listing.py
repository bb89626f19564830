"""Fast list answers: each object's list entry is encoded once per state and reused.

ListContainers and ListPodSandbox are what a kubelet's PLEG calls every second, and with 10,000
pods building 10,000 messages per call costs ~100 ms. An object's entry changes only with its state,
so the encoded entry is cached on the object keyed by state, and a list answer is the
concatenation of cached entries, each framed as field 1 of the response (``repeated X items = 1``;
the Stream* responses use field 1 too, so batches are framed the same way).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol


class Cacheable(Protocol):
    list_entry: tuple[int, bytes] | None

    @property
    def state(self) -> Any: ...


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


_FIELD_1_LENGTH_DELIMITED = b"\x0a"


def entry(obj: Cacheable, build: Callable[[Any], Any]) -> bytes:
    """``obj``'s list entry framed as field 1, rebuilt only when its state changed."""
    state = int(obj.state)
    cached = obj.list_entry
    if cached is not None and cached[0] == state:
        return cached[1]
    body: bytes = build(obj).SerializeToString()
    framed = _FIELD_1_LENGTH_DELIMITED + _varint(len(body)) + body
    obj.list_entry = (state, framed)
    return framed


def encode(objs: Iterable[Cacheable], build: Callable[[Any], Any]) -> bytes:
    """A whole response whose only field is ``repeated entry = 1``."""
    return b"".join(entry(o, build) for o in objs)


def batches(objs: Sequence[Cacheable], build: Callable[[Any], Any], size: int) -> Iterable[bytes]:
    """Non-empty responses of at most ``size`` entries each."""
    for start in range(0, len(objs), size):
        yield encode(objs[start : start + size], build)
