"""Termination messages: the host file the agent mounts at ``terminationMessagePath``, and the message an
exited container's status carries, as kubelet makes and reads them.

Writing (kubelet's ``GenerateRunContainerOptions`` and ``makeMounts``): for a container with a
``terminationMessagePath`` the agent creates ``<root-dir>/pods/<uid>/containers/<name>/`` (mode 0750) and in
it an empty file with a random name of 8 hex digits, mode 0666 whatever the umask (so that a container
running as any user can write it), and hands it to CreateContainer as a mount: host path that file,
container path the ``terminationMessagePath``. :func:`message_mount` does that.

Reading (kubelet's ``convertToKubeContainerStatus``, ``getTerminationMessage`` and
``readLastStringFromContainerLogs``), for a container the runtime reports exited, from its ContainerStatus
alone (the path and policy are in kubelet's annotations, the file in the mounts, the log path in
``log_path``) — :func:`status_message`:

- the mount whose container path is the annotated path names the file; at most its *last* 4096 bytes
  are the message (kubelet's ``MaxContainerTerminationMessageLength``, read as ``tail.ReadAtMost``); a
  file that cannot be read (other than missing) gives ``Error on reading termination log <path>: <why>``;
- under ``FallbackToLogsOnError``, when the container failed (exit code not 0, reason not
  ``ContainerCannotRun``) and the file is empty or missing (or there is no mount), the message is the
  tail of the container's log instead: its last 80 lines (``MaxContainerTerminationMessageLogLines``:
  lines of the CRI file, each ``P`` chunk one of them), decoded from the CRI format (a ``P`` chunk's text
  joins the next, an ``F`` line ends with a newline; stdout and stderr alike), of which the last 2048
  bytes are kept (``MaxContainerTerminationMessageLogLength``);
- a message from the runtime itself comes first: ``<runtime message>: <termination message>``.

:func:`truncate_pod_messages` is the status manager's cap on the whole pod (``normalizeStatus``): 12 KiB
shared evenly by its containers, each terminated message cut to its share.

Reads are small and bounded (4 KiB of the file; of the log, blocks from its end until 81 newlines are
seen), so they run inline where the PLEG inspects a pod.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubeharness.agent.pod import labels
from kubeharness.agent.pod.model import TERMINATION_MESSAGE_FALLBACK, Container
from kubeharness.wire.cri import api_pb2 as api

MAX_MESSAGE_BYTES = 4 * 1024  # kubelet's MaxContainerTerminationMessageLength
MAX_LOG_BYTES = 2 * 1024  # MaxContainerTerminationMessageLogLength
MAX_LOG_LINES = 80  # MaxContainerTerminationMessageLogLines
MAX_POD_MESSAGE_BYTES = 12 * 1024  # MaxPodTerminationMessageLogLength
CONTAINER_CANNOT_RUN = "ContainerCannotRun"
_BLOCK = 4096  # how much of the log is read at a time, from its end (kubelet's tail blockSize)


def pod_container_dir(root_dir: str, pod_uid: str, container_name: str) -> Path:
    """``<root-dir>/pods/<uid>/containers/<name>``: kubelet's getPodContainerDir."""
    return Path(root_dir) / "pods" / pod_uid / "containers" / container_name


def message_mount(root_dir: str, pod_uid: str, container: Container, rng: random.Random) -> api.Mount | None:
    """Create the container's termination message file and return its mount; None when the container has no
    ``terminationMessagePath`` or the file cannot be made (kubelet logs that and creates the container
    without the mount)."""
    if not container.termination_message_path:
        return None
    directory = pod_container_dir(root_dir, pod_uid, container.name)
    try:
        directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        path = directory / f"{rng.getrandbits(32):08x}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o666)
        try:
            os.fchmod(fd, 0o666)  # not what the umask left: any container user may write it
        finally:
            os.close(fd)
    except OSError:
        return None
    return api.Mount(container_path=container.termination_message_path, host_path=str(path))


def read_at_most(path: str, limit: int) -> bytes:
    """The last ``limit`` bytes of the file (all of a smaller one), as kubelet's ``tail.ReadAtMost``."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(max(0, size - limit))
        return f.read(limit)


def _go_error(err: OSError) -> str:
    text = os.strerror(err.errno) if err.errno is not None else str(err)
    return text[:1].lower() + text[1:]


def tail_lines_start(f: Any, size: int, lines: int) -> int:
    """Where the last ``lines`` newline-terminated lines of the file begin (kubelet's
    ``FindTailLineStartIndex``: an unterminated last line is not counted, so it comes along)."""
    counted = 0
    left = size
    block = b""
    while left > 0 and counted <= lines:
        right, left = left, max(0, left - _BLOCK)
        f.seek(left)
        block = f.read(right - left) + block
        counted = block.count(b"\n")
    start = left
    view = block
    while counted > lines:
        cut = view.index(b"\n") + 1
        view = view[cut:]
        start += cut
        counted -= 1
    return start


def decode_cri_log(data: bytes) -> bytes:
    """The text of CRI log lines (``<time> <stream> <F|P> <text>``): ``F`` lines end with a newline, ``P``
    chunks join what follows. A line that does not parse is skipped, as kubelet's reader skips it."""
    out = bytearray()
    for line in data.split(b"\n"):
        if not line:
            continue
        parts = line.split(b" ", 3)
        if len(parts) < 3 or parts[1] not in (b"stdout", b"stderr"):
            continue
        tag = parts[2]
        text = parts[3] if len(parts) > 3 else b""
        if tag == b"P":
            out += text
        elif tag == b"F":
            out += text + b"\n"
    return bytes(out)


def log_tail(path: str, lines: int = MAX_LOG_LINES, limit: int = MAX_LOG_BYTES) -> str:
    """The end of a container's CRI log as kubelet's ``readLastStringFromContainerLogs`` returns it."""
    try:
        real = os.path.realpath(path, strict=True)
    except OSError as err:
        return (f'Error on reading termination message from logs: failed to try resolving symlinks in path '
                f'"{path}": lstat {err.filename or path}: {_go_error(err)}')
    try:
        with open(real, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(tail_lines_start(f, size, lines))
            data = f.read()
    except OSError as err:
        return f'Error on reading termination message from logs: failed to open log file "{path}": {_go_error(err)}'
    return decode_cri_log(data)[-limit:].decode("utf-8", "replace")


def file_message(status: api.ContainerStatus, path: str, fallback: bool) -> tuple[str, bool]:
    """(the message in the file mounted at ``path``, whether the logs must be read instead)."""
    if not path:
        return "", fallback
    for mount in status.mounts:
        if mount.container_path != path:
            continue
        host = mount.host_path
        try:
            data = read_at_most(host, MAX_MESSAGE_BYTES)
        except FileNotFoundError:
            return "", fallback
        except OSError as err:  # Go opens a directory, and then cannot read it
            op = "read" if isinstance(err, IsADirectoryError) else "open"
            return f"Error on reading termination log {host}: {op} {host}: {_go_error(err)}", False
        return data.decode("utf-8", "replace"), fallback and not data
    return "", fallback


def status_message(status: api.ContainerStatus) -> str:
    """The message kubelet reports for a container the runtime shows exited (the runtime's own message for
    any other state)."""
    if status.state != api.CONTAINER_EXITED:
        return status.message
    notes = labels.notes_from_annotations(status.annotations)
    fallback = (notes.termination_message_policy == TERMINATION_MESSAGE_FALLBACK and status.exit_code != 0
                and status.reason != CONTAINER_CANNOT_RUN)
    message, check_logs = file_message(status, notes.termination_message_path, fallback)
    if check_logs:
        message = log_tail(status.log_path)
    if not message:
        return status.message
    return f"{status.message}: {message}" if status.message else message


def truncate_pod_messages(container_count: int, statuses: Sequence[dict[str, Any]]) -> None:
    """Cut every terminated message (``state`` and ``lastState``) to the pod's per-container share of 12 KiB,
    in place, as the status manager's ``normalizeStatus``: ``container_count`` is the pod's init and app
    containers."""
    share = MAX_POD_MESSAGE_BYTES // container_count if container_count > 0 else MAX_POD_MESSAGE_BYTES
    for status in statuses:
        for key in ("state", "lastState"):
            term = status.get(key, {}).get("terminated")
            if term is None or "message" not in term:
                continue
            raw = str(term["message"]).encode()
            if len(raw) > share:
                term["message"] = raw[:share].decode("utf-8", "ignore")


def remove_pod_dir(root_dir: str, pod_uid: str) -> None:
    """Remove the termination message files of a pod that is gone (kubelet's orphaned pod cleanup)."""
    base = Path(root_dir) / "pods" / pod_uid / "containers"
    if not base.is_dir():
        return
    for container_dir in base.iterdir():
        if container_dir.is_dir() and not container_dir.is_symlink():
            for item in container_dir.iterdir():
                with contextlib.suppress(OSError):
                    if item.is_file() and not item.is_symlink():
                        item.unlink()
            with contextlib.suppress(OSError):
                container_dir.rmdir()
    with contextlib.suppress(OSError):
        base.rmdir()
        base.parent.rmdir()
