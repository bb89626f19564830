"""In-memory object stores and the name index, the way containerd's CRI plugin keeps them.

A store maps full ids to objects and also answers unique id prefixes (containerd's truncindex does
the same, which is why ``crictl inspect 3f2a`` works). The emulator runs on one asyncio loop and
handlers do not await between checking and changing a store, so no locks are needed.

The name index reserves a sandbox or container name for the id that holds it; a second reservation
of the same name fails with an error naming the holder, as containerd's does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from kubeharness.errors import AlreadyExists, InvalidArgument, KubeharnessError, NotFound

T = TypeVar("T")


class Store(Generic[T]):
    """Objects of one kind by id."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items.values()))

    def add(self, key: str, item: T) -> None:
        if key in self._items:
            raise AlreadyExists(f"{self.kind} {key!r} already exists")
        self._items[key] = item

    def find(self, key: str, strict: bool = True) -> T | None:
        """The object with this id or unique id prefix, or None.

        An ambiguous prefix is INVALID_ARGUMENT when ``strict``; list filters pass ``strict=False``
        and get None, so a filter that names no single object matches nothing.
        """
        if not key:
            return None
        item = self._items.get(key)
        if item is not None:
            return item
        matches = [k for k in self._items if k.startswith(key)]
        if len(matches) > 1:
            if not strict:
                return None
            raise InvalidArgument(f"{self.kind} id prefix {key!r} is ambiguous: it matches {len(matches)} ids")
        return self._items[matches[0]] if matches else None

    def get(self, key: str) -> T:
        """Like :meth:`find`, but a missing object is NOT_FOUND."""
        item = self.find(key)
        if item is None:
            raise NotFound(f'an error occurred when try to find {self.kind} "{key}": not found')  # containerd's words
        return item

    def delete(self, key: str) -> None:
        self._items.pop(key, None)


class NameIndex:
    """Reserves unique names (``name_namespace_uid_attempt``) for the ids that hold them."""

    def __init__(self) -> None:
        self._by_name: dict[str, str] = {}

    def reserve(self, name: str, key: str, kind: str = "sandbox") -> None:
        holder = self._by_name.get(name)
        if holder is not None and holder != key:  # containerd's words and code (UNKNOWN)
            raise KubeharnessError(f'failed to reserve {kind} name "{name}": name "{name}" is reserved for "{holder}"')
        self._by_name[name] = key

    def release(self, name: str) -> None:
        self._by_name.pop(name, None)

    def holder(self, name: str) -> str | None:
        return self._by_name.get(name)
