"""Fast list answers: every object's list entry is kept encoded, refreshed whenever the object is saved.

ListContainers and ListPodSandbox are what a kubelet's PLEG calls every second; with 10,000 pods,
building 10,000 messages per call costs far more than the 50 ms a relist may take. An object's list
entry changes only when the object does, and every change is saved (``Runtime.save_*``), so the
runtime re-encodes the entry there. An unfiltered list answer is then one ``b"".join`` of the
entries (kept until the next change), each framed as field 1 of the response (``repeated X items = 1``;
the Stream* responses use field 1 too, so their batches are framed the same way).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_FIELD_1_LENGTH_DELIMITED = b"\x0a"


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


def framed(message: Any) -> bytes:
    """``message`` encoded as field 1 of an enclosing message."""
    body: bytes = message.SerializeToString()
    return _FIELD_1_LENGTH_DELIMITED + _varint(len(body)) + body


class ListIndex(Generic[T]):
    """Encoded list entries by object id, in creation order."""

    def __init__(self, build: Callable[[T], Any]) -> None:
        self._build = build
        self._entries: dict[str, bytes] = {}
        self._everything: bytes | None = None  # the joined entries, until the next change

    def __len__(self) -> int:
        return len(self._entries)

    def update(self, key: str, obj: T) -> None:
        """Re-encode ``obj``'s entry (a new key goes last; a known key keeps its place)."""
        self._entries[key] = framed(self._build(obj))
        self._everything = None

    def drop(self, key: str) -> None:
        if self._entries.pop(key, None) is not None:
            self._everything = None

    def everything(self) -> bytes:
        """The whole list as one encoded response (a kubelet relisting an unchanged node gets the same bytes)."""
        if self._everything is None:
            self._everything = b"".join(self._entries.values())
        return self._everything

    def of(self, keys: Iterable[str]) -> bytes:
        """An encoded response listing just these objects."""
        entries = self._entries
        return b"".join(entries[k] for k in keys)

    def batches(self, keys: Sequence[str], size: int) -> Iterator[bytes]:
        """Non-empty encoded responses of at most ``size`` entries each."""
        for start in range(0, len(keys), size):
            yield self.of(keys[start : start + size])
