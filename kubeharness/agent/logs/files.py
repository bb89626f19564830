"""What log rotation does to the filesystem: list a log's siblings, compress one through ``.tmp``.

Everything here is plain blocking file work on the agent's own log directories (kubelet's
``podLogsDir``), run by :mod:`~kubeharness.agent.logs.manager` (compression in a worker thread). Nothing
reads a live log: a pass only stats it; only rotated files are read, to compress them.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil

from kubeharness.agent.logs.rotation import COMPRESS_SUFFIX, TMP_SUFFIX

GZIP_LEVEL = 6  # Go's gzip.DefaultCompression, which kubelet's gzip.NewWriter uses
_COPY_CHUNK = 1 << 20


def siblings(log: str) -> list[str]:
    """The files named ``<log>.*`` (kubelet's ``filepath.Glob(log + ".*")``), as full paths."""
    directory, base = os.path.split(log)
    prefix = base + "."
    try:
        names = os.listdir(directory or ".")
    except FileNotFoundError:
        return []
    return [os.path.join(directory, n) for n in names if n.startswith(prefix)]


def glob_all(log: str) -> list[str]:
    """The files named ``<log>*``: the live file and every sibling (kubelet's Clean removes these)."""
    directory, base = os.path.split(log)
    try:
        names = os.listdir(directory or ".")
    except FileNotFoundError:
        return []
    return [os.path.join(directory, n) for n in names if n.startswith(base)]


def compress(log: str) -> str:
    """Gzip ``log`` into ``log.tmp``, rename that to ``log.gz``, remove ``log``; the ``.gz`` path.

    The ``.tmp`` has the source's permission bits. A failure leaves ``log`` as it was (the ``.tmp`` is
    removed, best effort; a later rotation removes any that is left) and raises :class:`OSError`.
    """
    mode = os.stat(log, follow_symlinks=False).st_mode & 0o7777
    tmp = log + TMP_SUFFIX
    gz = log + COMPRESS_SUFFIX
    try:
        src = os.open(log, os.O_RDONLY | os.O_NOFOLLOW)
        with open(src, "rb") as reader:
            dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
            os.fchmod(dst, mode)  # also when a stale .tmp was there (O_CREAT's mode is for new files only)
            with open(dst, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                        compresslevel=GZIP_LEVEL, mtime=0) as writer:
                shutil.copyfileobj(reader, writer, _COPY_CHUNK)
        os.rename(tmp, gz)
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)
    os.remove(log)
    return gz
