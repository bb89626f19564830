"""Filesystem safety shared by every daemon: owner-only unix sockets, state directories that are ours, and
paths that stay below their roots.

Who calls it: the CRI and CSI servers and the CRI proxy (through :func:`kubeharness.grpcserve.serve_unix`),
the fault control socket, the CNI fork server, :class:`kubeharness.persist.StateDirLock`, the CNI plugin's
store, the agent, the CSI path policy and the CRI emulator's container logs. It imports nothing of
kubeharness (the CNI plugin runs it in a fresh process per call, without gRPC), so its errors are its own
(:class:`FsafeError` and subclasses) and each caller turns them into its own vocabulary (a gRPC status, a
CNI error code, exit status 2 from the CLI).

Sockets. ``bind()`` creates a unix socket's file with mode ``0777 & ~umask``; chmod afterwards leaves a
moment where anyone may connect. gRPC binds *and listens* inside ``add_insecure_port`` and asyncio's
``start_unix_server`` does both in one call, so "chmod before listen" is not available, and setting the
umask around the bind is wrong too: the umask belongs to the whole process, and another thread's mkdir at
that moment (gRPC's, an executor's, a test's) would get it. So :func:`serve_unix_socket` binds in a fresh
directory of mode 0700 beside the final path, sets the socket's mode there, then hard-links it to its final
name (``link`` fails when something appeared there meanwhile: nothing is replaced) and removes the temporary
name and directory. Whoever sees the final name sees a socket that already has its final mode, whatever the
umask. A process killed in the middle leaves an empty ``.khsock-*`` directory behind, never a socket.

Paths. :func:`inside` says whether a path, with every symbolic link resolved, is below a root;
:func:`open_beneath` opens (and creates) a file below a root directory one component at a time with
``O_NOFOLLOW``, so a symbolic link swapped in between a check and the use is refused (ELOOP) rather than
followed out of the root.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import stat

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the CNI plugin imports this module, and typing costs 5 ms
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    T = TypeVar("T")

MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the terminating NUL
SOCKET_MODE = 0o600
PRIVATE_PREFIX = ".khsock-"


class FsafeError(Exception):
    """A path or directory that must not be used; ``message`` names it and says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ForeignOwner(FsafeError):
    """A directory owned by another user than the one this process runs as."""


class OutsideRoot(FsafeError):
    """A path that leaves its root (by ``..``, an absolute part or a symbolic link)."""


class SocketInUse(FsafeError):
    """A socket path where a server already listens, or where something else than a socket lies."""


# --- ownership ------------------------------------------------------------------------------------------

def _user(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def check_owner(directory: str | os.PathLike[str], what: str) -> None:
    """Refuse (:class:`ForeignOwner`) an existing ``directory`` that another user owns: another user could
    plant symbolic links or files in it that this process would then follow or trust. A missing directory
    passes (the caller creates it, owned by this process's user)."""
    try:
        st = os.stat(directory)
    except FileNotFoundError:
        return
    uid = os.geteuid()
    if st.st_uid != uid:
        raise ForeignOwner(f"{what} {os.fspath(directory)} is owned by {_user(st.st_uid)}, not by {_user(uid)} "
                           f"who runs this process; refusing to use it (chown it, or choose another directory)")


def make_dirs(directory: str | os.PathLike[str], mode: int = 0o755) -> None:
    """``os.makedirs`` where every directory it creates gets ``mode`` (never more than it, whatever the umask;
    ``os.makedirs`` gives the intermediate ones ``0777 & ~umask``)."""
    path = os.path.abspath(os.fspath(directory))
    missing: list[str] = []
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for one in reversed(missing):
        try:
            os.mkdir(one, mode)
        except FileExistsError:
            if not os.path.isdir(one):
                raise
            continue
        os.chmod(one, mode)  # mkdir's mode is masked by the umask; the umask only ever removes bits


def make_owned_dir(directory: str | os.PathLike[str], what: str, mode: int = 0o700) -> None:
    """A state directory: refused if another user owns it (:func:`check_owner`), created with ``mode`` if
    missing. An existing directory keeps its mode."""
    check_owner(directory, what)
    make_dirs(directory, mode)
    check_owner(directory, what)  # what now exists there (a race with another user making it)


# --- sockets ----------------------------------------------------------------------------------------------

def clear_stale_socket(path: str) -> None:
    """Make room for a server's unix socket: one left by a crashed server goes; a live server's socket or a
    file that is not a socket is refused (:class:`SocketInUse`)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketInUse(f"{path} exists and is not a socket; refusing to replace it")
    import socket  # here: the CNI plugin imports this module and never needs it

    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: left over from a crash
        return
    finally:
        probe.close()
    raise SocketInUse(f"another process is already serving on {path}")


def serve_unix_socket(path: str, bind: Callable[[str], T], mode: int = SOCKET_MODE) -> T:
    """Create the unix socket ``path`` with ``mode`` through ``bind(temporary_path)`` (which binds, and may
    listen, there), with no moment where it is reachable with another mode (see the module's docstring).
    Makes the parent directory (0755) if missing and clears a stale socket first; ``bind``'s answer is
    returned."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise SocketInUse(f"socket path {path!r} is longer than a unix socket path may be ({MAX_SOCKET_PATH} bytes)")
    parent = os.path.dirname(os.path.abspath(path))
    make_dirs(parent)
    clear_stale_socket(path)
    private = os.path.join(parent, PRIVATE_PREFIX + os.urandom(4).hex())
    os.mkdir(private, 0o700)
    dir_fd = os.open(private, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    name = os.urandom(8).hex()  # unique: gRPC unlinks the path it bound when it stops
    try:
        os.fchmod(dir_fd, 0o700)  # the umask may have taken bits; it cannot have added any
        temporary = os.path.join(private, name)
        if len(os.fsencode(temporary)) > MAX_SOCKET_PATH - 8:  # gRPC takes at most 105 bytes
            temporary = f"/proc/self/fd/{dir_fd}/{name}"  # the same directory by a short name
        answer = bind(temporary)
        os.chmod(name, mode, dir_fd=dir_fd, follow_symlinks=True)
        try:
            os.link(name, path, src_dir_fd=dir_fd)
        except FileExistsError:
            raise SocketInUse(f"{path} appeared while the server was starting; refusing to replace it") from None
        return answer
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
        os.close(dir_fd)
        os.rmdir(private)


# --- paths below a root -----------------------------------------------------------------------------------

def is_below(path: str, root: str) -> bool:
    """Whether the normalised ``path`` is ``root`` or below it (a plain string comparison)."""
    root = root.rstrip("/") or "/"
    return path == root or path.startswith(root if root.endswith("/") else root + "/")


def inside(path: str, root: str) -> bool:
    """Whether ``path``, with every symbolic link in it resolved, is ``root`` or below it (``root``'s own
    links resolved too). The parts of ``path`` that do not exist yet count as plain names."""
    return is_below(os.path.realpath(path), os.path.realpath(root))


def open_beneath(root: str, relative: str, flags: int, mode: int = 0o600, *, parents_mode: int | None = None) -> int:
    """Open ``root/relative`` without following any symbolic link below ``root``: each directory is
    opened with ``O_NOFOLLOW | O_DIRECTORY`` relative to the one before, and the file with ``O_NOFOLLOW``.
    With ``parents_mode`` missing directories are created with that mode. A link on the way is
    :class:`OutsideRoot`; other errors are the OSError. ``root`` itself may be reached through links (its
    owner chose it)."""
    parts = [p for p in relative.split("/") if p and p != "."]
    if not parts or ".." in parts or relative.startswith("/"):
        raise OutsideRoot(f"{relative!r} is not a path below {root}")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts[:-1]):
            try:
                next_fd = _open_dir(part, fd, parents_mode)
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise OutsideRoot(f"{os.path.join(root, *parts[:i + 1])} is a symbolic link or not a "
                                      f"directory; refusing to follow it out of {root}") from None
                raise
            os.close(fd)
            fd = next_fd
        try:
            return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=fd)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise OutsideRoot(f"{os.path.join(root, relative)} is a symbolic link; refusing to follow it "
                                  f"out of {root}") from None
            raise
    finally:
        os.close(fd)


def _open_dir(name: str, dir_fd: int, create_mode: int | None) -> int:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        if create_mode is None:
            raise
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, create_mode, dir_fd=dir_fd)
    return os.open(name, flags, dir_fd=dir_fd)
