"""A container's filesystem: the image in memory, an overlay upper layer on disk, and bind mounts.

Three sources make up what the container sees, looked up in this order for every path component:

- mounts (:class:`Mount`): a container path backed by a real host directory or file, shared by every
  container that mounts the same host path (emptyDir, hostPath, ConfigMap, the termination log);
- the writable upper layer: a real directory (``upper_dir``) so it survives an emulator restart, with
  overlay semantics: writing to an image file copies it up, deleting one records a whiteout file
  ``.wh.<name>`` beside it (hidden from listings), and a directory recreated over a deleted image
  directory is marked opaque with ``.wh..wh..opq``;
- the image (lower layer, :class:`~.layout.ImageLayout`), read-only and shared.

Paths are normalised lexically inside the virtual root (``..`` stops at ``/``) and symlinks found on
disk are resolved inside the virtual root too, so nothing reaches outside ``upper_dir`` or a mount's
host path. Errors are :class:`VfsError` carrying the strerror text a program would print.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat as st
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from kubeharness.clock import RealClock
from kubeharness.emulators.cri.shell.layout import (
    DIR,
    IMAGE_MTIME_NS,
    ImageEntry,
    ImageLayout,
    busybox_layout,
    parent_of,
)

__all__ = ["ImageEntry", "ImageLayout", "Mount", "Stat", "Vfs", "VfsError", "busybox_layout", "normalize"]

ENOENT = "No such file or directory"
ENOTDIR = "Not a directory"
EISDIR = "Is a directory"
EEXIST = "File exists"
ENOTEMPTY = "Directory not empty"
EROFS = "Read-only file system"
EBUSY = "Device or resource busy"
ELOOP = "Too many levels of symbolic links"
EPERM = "Operation not permitted"
EACCES = "Permission denied"
EINVAL = "Invalid argument"

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_MAX_LINKS = 40


class VfsError(Exception):
    """A failed filesystem operation; ``str()`` is the strerror text, e.g. "No such file or directory"."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Mount:
    """A bind mount: ``container_path`` shows the host file or directory ``host_path``."""

    container_path: str
    host_path: str
    readonly: bool = False


@dataclass(frozen=True)
class Stat:
    """What ``stat`` reports about a path; ``applet`` names the program of an image executable."""

    kind: str  # file | dir | dev | link
    size: int
    mode: int
    mtime_ns: int
    readonly: bool = False
    applet: str = ""
    device: str = ""
    host_path: str = ""


@dataclass
class _Loc:
    """Where a canonical virtual path lives. ``kind`` is "" when nothing is there (yet)."""

    vpath: str
    layer: str  # lower | upper | host | none
    kind: str  # file | dir | dev | link | ""
    host: str = ""  # disk path (upper or host layers, and where a missing path in a mount would go)
    entry: ImageEntry | None = None
    ro: bool = False
    upper_dir_exists: bool = False  # for overlay dirs: the directory exists in the upper layer
    lower_visible: bool = False  # for overlay dirs: image children show through
    lower_here: bool = False  # the image has this path and it is not hidden
    in_mount: bool = False
    parent: _Loc | None = None


def normalize(path: str, cwd: str = "/") -> str:
    """Absolute, lexically normalised path inside the virtual root: ``..`` never climbs above ``/``."""
    if not path.startswith("/"):
        path = cwd + "/" + path
    parts: list[str] = []
    for comp in path.split("/"):
        if not comp or comp == ".":
            continue
        if comp == "..":
            if parts:
                parts.pop()
            continue
        parts.append(comp)
    return "/" + "/".join(parts)


def _join(vdir: str, name: str) -> str:
    return vdir + name if vdir == "/" else vdir + "/" + name


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _kind(mode: int) -> str:
    if st.S_ISDIR(mode):
        return "dir"
    if st.S_ISLNK(mode):
        return "link"
    return "file"


class Vfs:
    """The filesystem one container sees (see the module docstring)."""

    def __init__(
        self,
        image_files: Mapping[str, ImageEntry],
        upper_dir: Path,
        mounts: list[Mount],
        *,
        now_ns: Callable[[], int] | None = None,
        readonly_root: bool = False,
    ) -> None:
        self.image = image_files if isinstance(image_files, ImageLayout) else ImageLayout(image_files)
        self.upper_dir = str(upper_dir)
        os.makedirs(self.upper_dir, exist_ok=True)
        self.now_ns = now_ns or RealClock().now_ns
        self.readonly_root = readonly_root
        self._extra: dict[str, ImageEntry] = {}
        self._extra_children: dict[str, set[str]] = {}
        self._mounts: dict[str, Mount] = {}
        self._implicit: set[str] = set()  # ancestors of mount points: always directories
        self._mount_children: dict[str, set[str]] = {}
        for mount in mounts:
            point = normalize(mount.container_path)
            self._mounts[point] = Mount(point, os.path.realpath(mount.host_path), mount.readonly)
            child = point
            while child != "/":
                parent = parent_of(child)
                self._mount_children.setdefault(parent, set()).add(child[child.rfind("/") + 1 :])
                self._implicit.add(parent)
                child = parent

    # -- lookup -------------------------------------------------------------------------------------

    def _lower(self, vpath: str) -> ImageEntry | None:
        entry = self._extra.get(vpath)
        return entry if entry is not None else self.image.get_entry(vpath)

    def _root(self) -> _Loc:
        return _Loc("/", "upper", "dir", self.upper_dir, DIR, self.readonly_root, True, True, True)

    def _walk(self, path: str, follow_last: bool = True, cwd: str = "/") -> _Loc:
        vpath = normalize(path, cwd)
        for _ in range(_MAX_LINKS):
            redirected = self._walk_once(vpath, follow_last)
            if isinstance(redirected, _Loc):
                return redirected
            vpath = redirected
        raise VfsError(ELOOP, path)

    def _walk_once(self, vpath: str, follow_last: bool) -> _Loc | str:
        """The location of ``vpath``, or the new path to walk when a symlink redirects the walk."""
        cur = self._root()
        comps = [c for c in vpath.split("/") if c]
        for i, name in enumerate(comps):
            last = i == len(comps) - 1
            vdir = cur.vpath
            vp = _join(vdir, name)
            mount = self._mounts.get(vp)
            if mount is not None:
                try:
                    info = os.stat(mount.host_path)
                except OSError:
                    raise VfsError(ENOENT, vp) from None
                nxt = _Loc(vp, "host", _kind(info.st_mode), mount.host_path, ro=mount.readonly, in_mount=True)
            elif cur.layer == "host":
                hp = cur.host + "/" + name
                info_or_none = _lstat(hp)
                if info_or_none is None:
                    nxt = _Loc(vp, "none", "", hp, ro=cur.ro, in_mount=True)
                else:
                    nxt = _Loc(vp, "host", _kind(info_or_none.st_mode), hp, ro=cur.ro, in_mount=True)
            else:
                nxt = self._overlay_child(cur, vp, name)
            nxt.parent = cur
            if nxt.kind == "link" and (follow_last or not last):
                target = os.readlink(nxt.host)
                rest = "/".join(comps[i + 1 :])
                base = target if target.startswith("/") else vdir + "/" + target
                return normalize(base + ("/" + rest if rest else ""))
            if not last:
                if nxt.kind == "":
                    raise VfsError(ENOENT, vpath)
                if nxt.kind != "dir":
                    raise VfsError(ENOTDIR, vpath)
            cur = nxt
        return cur

    def _overlay_child(self, parent: _Loc, vp: str, name: str) -> _Loc:
        up = self.upper_dir + vp
        lower = self._lower(vp) if parent.lower_visible else None
        info = _lstat(up) if parent.upper_dir_exists else None
        if info is not None:
            kind = _kind(info.st_mode)
            loc = _Loc(vp, "upper", kind, up, ro=self.readonly_root, upper_dir_exists=kind == "dir")
            if lower is not None and not os.path.lexists(self.upper_dir + _join(parent.vpath, WHITEOUT + name)):
                loc.lower_here = True
                loc.lower_visible = kind == "dir" and lower.kind == "dir" and not os.path.lexists(up + "/" + OPAQUE)
            return loc
        whiteout = parent.upper_dir_exists and os.path.lexists(self.upper_dir + _join(parent.vpath, WHITEOUT + name))
        if vp in self._implicit:
            return _Loc(vp, "lower", "dir", up, DIR, self.readonly_root, lower_visible=not whiteout)
        if lower is not None and not whiteout:
            kind = "file" if lower.kind == "exe" else lower.kind
            return _Loc(vp, "lower", kind, up, lower, self.readonly_root, lower_visible=True, lower_here=True)
        return _Loc(vp, "none", "", up, ro=self.readonly_root)

    def resolve(self, path: str, cwd: str = "/") -> str:
        """The canonical virtual path (symlinks resolved) of an existing ``path``."""
        loc = self._walk(path, True, cwd)
        if not loc.kind:
            raise VfsError(ENOENT, path)
        return loc.vpath

    def stat(self, path: str, cwd: str = "/", follow: bool = True) -> Stat:
        loc = self._walk(path, follow, cwd)
        if not loc.kind:
            raise VfsError(ENOENT, path)
        if loc.layer == "lower":
            entry = loc.entry or DIR
            kind = "file" if entry.kind == "exe" else entry.kind
            applet = entry.target if entry.kind == "exe" else ""
            device = entry.target if entry.kind == "dev" else ""
            return Stat(kind, len(entry.data), entry.mode, IMAGE_MTIME_NS, loc.ro, applet, device)
        info = os.lstat(loc.host)
        size = info.st_size if loc.kind == "file" else 0
        return Stat(loc.kind, size, st.S_IMODE(info.st_mode), info.st_mtime_ns, loc.ro, host_path=loc.host)

    def exists(self, path: str, cwd: str = "/") -> bool:
        try:
            return bool(self._walk(path, True, cwd).kind)
        except VfsError:
            return False

    def is_dir(self, path: str, cwd: str = "/") -> bool:
        try:
            return self._walk(path, True, cwd).kind == "dir"
        except VfsError:
            return False

    # -- reading ------------------------------------------------------------------------------------

    def read(self, path: str, cwd: str = "/") -> bytes:
        loc = self._walk(path, True, cwd)
        if not loc.kind:
            raise VfsError(ENOENT, path)
        if loc.kind == "dir":
            raise VfsError(EISDIR, path)
        if loc.layer == "lower":
            entry = loc.entry
            assert entry is not None
            return b"" if entry.kind == "dev" else entry.data
        try:
            with open(loc.host, "rb") as f:
                return f.read()
        except OSError as exc:
            raise VfsError(exc.strerror or EACCES, path) from None

    def listdir(self, path: str, cwd: str = "/") -> list[str]:
        loc = self._walk(path, True, cwd)
        if not loc.kind:
            raise VfsError(ENOENT, path)
        if loc.kind != "dir":
            raise VfsError(ENOTDIR, path)
        names: set[str] = set()
        hidden: set[str] = set()
        if loc.layer == "host" or loc.upper_dir_exists:
            for name in os.listdir(loc.host):
                if name.startswith(WHITEOUT) and loc.layer != "host":
                    if name != OPAQUE:
                        hidden.add(name[len(WHITEOUT) :])
                else:
                    names.add(name)
        if loc.layer != "host" and loc.lower_visible:
            lower = set(self.image.children.get(loc.vpath, ()))
            lower.update(self._extra_children.get(loc.vpath, ()))
            names.update(lower - hidden)
        names.update(self._mount_children.get(loc.vpath, ()))
        return sorted(names)

    # -- writing ------------------------------------------------------------------------------------

    def _check_writable(self, loc: _Loc, path: str) -> None:
        if loc.ro:
            raise VfsError(EROFS, path)

    def _copy_up_dir(self, loc: _Loc) -> str:
        """Make sure the overlay directory ``loc`` exists in the upper layer; return its disk path."""
        if loc.layer == "host":
            return loc.host
        hp = self.upper_dir + (loc.vpath if loc.vpath != "/" else "")
        if not loc.upper_dir_exists:
            if loc.parent is not None:
                self._copy_up_dir(loc.parent)
            os.makedirs(hp, exist_ok=True)
            if loc.entry is not None:
                os.chmod(hp, loc.entry.mode & 0o7777)
            loc.upper_dir_exists = True
        return hp

    def _drop_whiteout(self, loc: _Loc) -> None:
        if loc.parent is None or loc.parent.layer == "host":
            return
        name = loc.vpath[loc.vpath.rfind("/") + 1 :]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.upper_dir + _join(loc.parent.vpath, WHITEOUT + name))

    def _target_for_create(self, loc: _Loc, path: str) -> str:
        """The disk path a new file at ``loc`` is written to, preparing its parent directory."""
        name = loc.vpath[loc.vpath.rfind("/") + 1 :]
        if name.startswith(WHITEOUT):
            raise VfsError(EPERM, path)
        parent = loc.parent
        assert parent is not None
        if parent.layer == "host":
            return loc.host
        self._copy_up_dir(parent)
        self._drop_whiteout(loc)
        return self.upper_dir + loc.vpath

    def _stamp(self, host: str) -> None:
        now = self.now_ns()
        os.utime(host, ns=(now, now), follow_symlinks=False)

    def write(self, path: str, data: bytes, append: bool = False, cwd: str = "/") -> None:
        """Write ``data`` to a file, creating it, truncating it (default) or appending to it."""
        loc = self._walk(path, True, cwd)
        if loc.kind == "dir":
            raise VfsError(EISDIR, path)
        if loc.kind == "dev" or (loc.entry is not None and loc.entry.kind == "dev"):
            return
        self._check_writable(loc, path)
        if loc.layer == "lower":
            entry = loc.entry
            assert entry is not None
            host = self._target_for_create(loc, path)
            content = entry.data + data if append else data
            self._write_host(host, content, False, path)
            os.chmod(host, entry.mode & 0o7777)
        elif loc.layer == "none":
            host = self._target_for_create(loc, path)
            self._write_host(host, data, append, path)
        else:
            host = loc.host
            self._write_host(host, data, append, path)
        self._stamp(host)

    @staticmethod
    def _write_host(host: str, data: bytes, append: bool, path: str) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if append else os.O_TRUNC)
        try:
            fd = os.open(host, flags, 0o644)
        except OSError as exc:
            raise VfsError(exc.strerror or EACCES, path) from None
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """A file the runtime provides (/etc/hostname, /etc/resolv.conf, /etc/hosts), below the upper layer."""
        vpath = normalize(path)
        self._extra[vpath] = ImageEntry("file", data, mode)
        child = vpath
        while child != "/":
            parent = parent_of(child)
            self._extra_children.setdefault(parent, set()).add(child[child.rfind("/") + 1 :])
            if self._lower(parent) is None:
                self._extra[parent] = DIR
            child = parent

    def touch(self, path: str, cwd: str = "/") -> None:
        """Create an empty file, or set an existing path's modification time to now."""
        loc = self._walk(path, True, cwd)
        if not loc.kind:
            self.write(path, b"", append=True, cwd=cwd)
            return
        if loc.kind == "dev":
            return
        self._check_writable(loc, path)
        if loc.layer == "lower":
            if loc.kind == "dir":
                host = self._copy_up_dir(loc)
            else:
                self.write(path, b"", append=True, cwd=cwd)
                return
        else:
            host = loc.host
        self._stamp(host)

    def mkdir(self, path: str, parents: bool = False, cwd: str = "/", mode: int = 0o755) -> None:
        vpath = normalize(path, cwd)
        if parents:
            partial = ""
            for comp in [c for c in vpath.split("/") if c]:
                partial += "/" + comp
                loc = self._walk(partial)
                if loc.kind == "dir":
                    continue
                if loc.kind:
                    raise VfsError(EEXIST if partial == vpath else ENOTDIR, path)
                self._mkdir_at(loc, path, mode)
            return
        loc = self._walk(vpath)
        if loc.kind:
            raise VfsError(EEXIST, path)
        self._mkdir_at(loc, path, mode)

    def _mkdir_at(self, loc: _Loc, path: str, mode: int) -> None:
        self._check_writable(loc, path)
        host = self._target_for_create(loc, path)
        try:
            os.mkdir(host, mode)
        except OSError as exc:
            raise VfsError(exc.strerror or EACCES, path) from None
        parent = loc.parent
        if parent is not None and parent.layer != "host" and parent.lower_visible and self._lower(loc.vpath):
            # A directory recreated over a deleted image directory must not show the old contents.
            open(host + "/" + OPAQUE, "wb").close()
        self._stamp(host)

    def remove(self, path: str, recursive: bool = False, cwd: str = "/") -> None:
        """Remove a file, an empty directory, or (``recursive``) a whole tree."""
        loc = self._walk(path, False, cwd)
        if not loc.kind:
            raise VfsError(ENOENT, path)
        if loc.vpath == "/" or loc.vpath in self._mounts or loc.vpath in self._implicit:
            raise VfsError(EBUSY, path)
        self._check_writable(loc, path)
        if loc.kind == "dir":
            children = self.listdir(loc.vpath)
            if children and not recursive:
                raise VfsError(ENOTEMPTY, path)
            for child in children:
                self.remove(_join(loc.vpath, child), True)
            if loc.layer == "host":
                os.rmdir(loc.host)
            elif os.path.lexists(self.upper_dir + loc.vpath):
                shutil.rmtree(self.upper_dir + loc.vpath)  # only whiteouts are left in it
        elif loc.layer in ("host", "upper"):
            os.unlink(loc.host)
        if loc.lower_here and loc.parent is not None:
            parent_host = self._copy_up_dir(loc.parent)
            name = loc.vpath[loc.vpath.rfind("/") + 1 :]
            open(parent_host + "/" + WHITEOUT + name, "wb").close()

    def rename(self, src: str, dst: str, cwd: str = "/") -> None:
        """Move a file (by copy and remove, as across filesystems)."""
        data = self.read(src, cwd)
        mode = self.stat(src, cwd).mode
        self.write(dst, data, cwd=cwd)
        self.chmod(dst, mode, cwd)
        self.remove(src, cwd=cwd)

    def chmod(self, path: str, mode: int, cwd: str = "/") -> None:
        loc = self._walk(path, True, cwd)
        if not loc.kind:
            raise VfsError(ENOENT, path)
        self._check_writable(loc, path)
        if loc.layer == "lower":
            if loc.kind == "dir":
                host = self._copy_up_dir(loc)
            else:
                self.write(path, b"", append=True, cwd=cwd)
                host = self._walk(path, True, cwd).host
        else:
            host = loc.host
        os.chmod(host, mode & 0o7777)

    # -- accounting ---------------------------------------------------------------------------------

    def upper_bytes(self) -> int:
        """Bytes used by the writable layer (file sizes; whiteouts and directories count nothing)."""
        total = 0
        for root, _dirs, files in os.walk(self.upper_dir):
            for name in files:
                info = _lstat(os.path.join(root, name))
                if info is not None and st.S_ISREG(info.st_mode):
                    total += info.st_size
        return total
