"""Volumes as the CSI emulator keeps them: what the controller created, and where the node staged and
published them, in an append-only journal that survives restarts.

The records are plain data; the services decide what a call may do (:mod:`.controller`, :mod:`.node`)
and this module only stores it. A volume's id is derived from its name, so re-creating a volume after a
DeleteVolume gives the same id, and tests can predict it.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kubeharness.errors import Aborted, NotFound
from kubeharness.persist import Journal

KIND = "volume"
_held: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("held_volumes", default=frozenset())


@dataclass(frozen=True)
class Capability:
    """One requested volume capability: block or mount (with fs type and flags), and the access mode."""

    access_type: str  # "mount" or "block"
    mode: int  # csi.v1 VolumeCapability.AccessMode.Mode
    fs_type: str = ""
    mount_flags: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mount_flags": list(self.mount_flags)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Capability:
        return cls(data["access_type"], int(data["mode"]), data.get("fs_type", ""), tuple(data.get("mount_flags", ())))


@dataclass
class Published:
    """A volume published at a target path on this node."""

    target: str
    readonly: bool
    capability: Capability


@dataclass
class Volume:
    """One volume and everything that refers to it."""

    id: str
    name: str
    capacity_bytes: int
    parameters: dict[str, str] = field(default_factory=dict)
    capabilities: list[Capability] = field(default_factory=list)
    context: dict[str, str] = field(default_factory=dict)
    # node id -> (readonly, access mode) of each ControllerPublishVolume
    attached: dict[str, dict[str, Any]] = field(default_factory=dict)
    staged_at: str = ""
    staged_capability: Capability | None = None
    published: dict[str, Published] = field(default_factory=dict)

    def as_record(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "capacity_bytes": self.capacity_bytes,
            "parameters": self.parameters, "capabilities": [c.as_dict() for c in self.capabilities],
            "context": self.context, "attached": self.attached, "staged_at": self.staged_at,
            "staged_capability": self.staged_capability.as_dict() if self.staged_capability else None,
            "published": {t: {"readonly": p.readonly, "capability": p.capability.as_dict()}
                          for t, p in self.published.items()},
        }

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Volume:
        staged = r.get("staged_capability")
        return cls(
            id=r["id"], name=r["name"], capacity_bytes=int(r["capacity_bytes"]),
            parameters=dict(r.get("parameters", {})),
            capabilities=[Capability.from_dict(c) for c in r.get("capabilities", [])],
            context=dict(r.get("context", {})), attached=dict(r.get("attached", {})),
            staged_at=r.get("staged_at", ""),
            staged_capability=Capability.from_dict(staged) if staged else None,
            published={t: Published(t, bool(p["readonly"]), Capability.from_dict(p["capability"]))
                       for t, p in r.get("published", {}).items()},
        )


def volume_id_for(name: str) -> str:
    return "khv-" + hashlib.sha256(name.encode()).hexdigest()[:20]


class VolumeStore:
    """Every volume, by id and by name, written through to the journal on each change."""

    def __init__(self, state_dir: Path, compact_lines: int = 10_000) -> None:
        self.journal = Journal(state_dir / "volumes.journal", compact_lines)
        self.volumes: dict[str, Volume] = {}
        self._by_name: dict[str, str] = {}
        self._busy: set[str] = set()

    def load(self) -> None:
        for record in self.journal.load().get(KIND, {}).values():
            volume = Volume.from_record(record)
            self.volumes[volume.id] = volume
            self._by_name[volume.name] = volume.id

    def close(self) -> None:
        self.journal.close()

    def get(self, volume_id: str) -> Volume:
        volume = self.volumes.get(volume_id)
        if volume is None:
            raise NotFound(f"volume {volume_id!r} does not exist")
        return volume

    def find_name(self, name: str) -> Volume | None:
        volume_id = self._by_name.get(name)
        return None if volume_id is None else self.volumes.get(volume_id)

    def save(self, volume: Volume) -> None:
        self.volumes[volume.id] = volume
        self._by_name[volume.name] = volume.id
        self.journal.put(KIND, volume.id, volume.as_record())
        if self.journal.wants_compaction(len(self.volumes)):
            self.journal.compact((KIND, v.id, v.as_record()) for v in self.volumes.values())

    def remove(self, volume: Volume) -> None:
        self.volumes.pop(volume.id, None)
        self._by_name.pop(volume.name, None)
        self.journal.delete(KIND, volume.id)

    def used_bytes(self) -> int:
        return sum(v.capacity_bytes for v in self.volumes.values())

    @contextlib.contextmanager
    def exclusive(self, key: str) -> Iterator[None]:
        """One operation at a time per volume (id or name): another one meanwhile is ABORTED, as the spec
        says a plugin should answer while an operation on the same volume is pending. The call that holds
        the volume (its task) may take it again: a fault that hangs a call holds its volume around it."""
        held = _held.get()
        if key in held:
            yield
            return
        if key in self._busy:
            raise Aborted(f"an operation on volume {key!r} is already in progress")
        self._busy.add(key)
        token = _held.set(held | {key})
        try:
            yield
        finally:
            _held.reset(token)
            self._busy.discard(key)
