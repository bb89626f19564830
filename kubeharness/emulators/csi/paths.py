"""Checking the paths a client gives before anything is touched.

CSI lets the CO choose staging and target paths; a plugin running as root that mkdirs, mounts or
removes whatever it is told is a hazard. A path must be absolute, free of ``..`` segments and NUL
bytes, and below one of the configured roots, also once every symbolic link in its existing part is
resolved (a link inside a root that points out of it does not make a way out); otherwise the call is
INVALID_ARGUMENT naming the field, and nothing on disk changes. The roots themselves may be links.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from kubeharness import fsafe
from kubeharness.errors import InvalidArgument

MAX_PATH = 4096


class PathPolicy:
    """The roots under which staging and target paths may be."""

    def __init__(self, roots: Iterable[str]) -> None:
        self.roots = tuple(os.path.normpath(r) for r in roots if r)

    def check(self, field_name: str, path: str) -> str:
        """``path`` if it is acceptable for ``field_name``; INVALID_ARGUMENT otherwise."""
        if not path:
            raise InvalidArgument(f"{field_name} is required")
        if "\x00" in path or len(path) > MAX_PATH:
            raise InvalidArgument(f"{field_name} is not a usable path")
        if not path.startswith("/"):
            raise InvalidArgument(f"{field_name} {path!r} must be an absolute path")
        if ".." in path.split("/"):
            raise InvalidArgument(f"{field_name} {path!r} must not contain '..'")
        normal = os.path.normpath(path)
        if not any(normal == root or normal.startswith(root.rstrip("/") + "/") for root in self.roots):
            raise InvalidArgument(f"{field_name} {path!r} is outside the plugin's allowed roots "
                                  f"({', '.join(self.roots)})")
        if any(normal == root for root in self.roots):
            raise InvalidArgument(f"{field_name} {path!r} is an allowed root itself, not a path below it")
        real = os.path.realpath(normal)
        if not any(fsafe.inside(normal, root) and real != os.path.realpath(root) for root in self.roots):
            raise InvalidArgument(f"{field_name} {path!r} leads through a symbolic link to {real!r}, outside the "
                                  f"plugin's allowed roots ({', '.join(self.roots)})")
        return normal
