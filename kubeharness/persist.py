"""Durable records for emulator state: one JSON file per object, replaced atomically.

A record is written to a temporary file in the same directory and renamed over the old one, so a
crash at any point leaves either the old or the new record, never a torn one. Removing an object
unlinks its file. Stray temporary files from a crash are ignored and cleaned on load.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_TMP_SUFFIX = ".tmp"


class RecordDir:
    """A directory of ``<key>.json`` records."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)

    def _file(self, key: str) -> Path:
        return self.path / f"{key}.json"

    def save(self, key: str, record: dict[str, Any]) -> None:
        """Write ``record`` under ``key``, replacing any previous one atomically."""
        target = self._file(key)
        tmp = target.with_name(target.name + _TMP_SUFFIX)
        data = json.dumps(record, separators=(",", ":")).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, target)

    def delete(self, key: str) -> None:
        """Forget ``key``; forgetting an absent key is not an error."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._file(key))

    def load(self) -> Iterator[dict[str, Any]]:
        """Every readable record; unreadable ones are logged and skipped."""
        for entry in sorted(os.scandir(self.path), key=lambda e: e.name):
            if entry.name.endswith(_TMP_SUFFIX):
                os.unlink(entry.path)
                continue
            if not entry.name.endswith(".json"):
                continue
            try:
                with open(entry.path, "rb") as f:
                    record = json.loads(f.read())
            except (OSError, ValueError) as err:
                log.error("skipping unreadable state record %s: %s", entry.path, err)
                continue
            if isinstance(record, dict):
                yield record
