"""Image layouts: the read-only lower layer of a container filesystem, held in memory.

An image is a mapping from absolute paths to :class:`ImageEntry` values (directories, files with their
bytes, executables named by the applet that implements them, and devices). :class:`ImageLayout` wraps
such a mapping with a children index so that directory listings are cheap; build one per image and
share it between containers. :func:`busybox_layout` gives the usual busybox image.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

# The time every image file claims as its modification time: 2026-01-01T00:00:00Z.
IMAGE_MTIME_NS = 1_767_225_600 * 1_000_000_000


@dataclass(frozen=True)
class ImageEntry:
    """One path of an image: ``kind`` is dir, file, exe (``target`` = applet name) or dev (``target`` = device)."""

    kind: str
    data: bytes = b""
    mode: int = 0o644
    target: str = ""


DIR = ImageEntry("dir", mode=0o755)


def parent_of(path: str) -> str:
    """``/a/b`` -> ``/a``; ``/a`` -> ``/``."""
    cut = path.rfind("/")
    return path[:cut] if cut > 0 else "/"


class ImageLayout(Mapping[str, ImageEntry]):
    """An immutable image mapping plus the names in each directory."""

    def __init__(self, entries: Mapping[str, ImageEntry]) -> None:
        self._entries: dict[str, ImageEntry] = {"/": DIR}
        self._entries.update(entries)
        self.children: dict[str, set[str]] = {}
        for path in list(self._entries):
            if path == "/":
                continue
            child = path
            while child != "/":
                parent = parent_of(child)
                self.children.setdefault(parent, set()).add(child[child.rfind("/") + 1 :])
                if parent not in self._entries:
                    self._entries[parent] = DIR
                child = parent

    def __getitem__(self, key: str) -> ImageEntry:
        return self._entries[key]

    def get_entry(self, key: str) -> ImageEntry | None:
        return self._entries.get(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


PASSWD = (
    b"root:x:0:0:root:/root:/bin/sh\n"
    b"daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
    b"nobody:x:65534:65534:nobody:/home:/bin/false\n"
)
GROUP = b"root:x:0:\ndaemon:x:1:\nnobody:x:65534:\n"


def busybox_layout(applets: Iterable[str]) -> ImageLayout:
    """The usual busybox image: every applet in /bin (and /bin/sh), users, groups and the standard dirs."""
    entries: dict[str, ImageEntry] = {}
    for name in (*applets, "sh"):
        entries[f"/bin/{name}"] = ImageEntry("exe", mode=0o755, target=name)
    entries["/etc/passwd"] = ImageEntry("file", PASSWD)
    entries["/etc/group"] = ImageEntry("file", GROUP)
    entries["/tmp"] = ImageEntry("dir", mode=0o1777)
    entries["/root"] = ImageEntry("dir", mode=0o700)
    for path in ("/home", "/var", "/var/spool", "/var/www", "/usr", "/usr/bin", "/usr/sbin", "/sbin", "/proc"):
        entries[path] = DIR
    for dev in ("null", "zero", "stdout", "stderr", "stdin", "random", "urandom"):
        entries[f"/dev/{dev}"] = ImageEntry("dev", mode=0o666, target=dev)
    entries["/proc/1"] = DIR
    entries["/proc/version"] = ImageEntry("file", b"Linux version 6.1.0-kubeharness (kubeharness) #1 SMP\n", 0o444)
    entries["/proc/uptime"] = ImageEntry("file", b"0.00 0.00\n", 0o444)
    return ImageLayout(entries)
