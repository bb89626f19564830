"""What programs yield and what they read and write: clock waits, blocks, file descriptors and pipes.

The driver sees only :class:`Wait` (yielded by a program) and :class:`Signal` (sent into it). Inside a
program every job yields a *block* (:class:`Sleep`, :class:`PipeRead`, :class:`PipeWrite`,
:class:`JobWait`, :data:`FOREVER`, :data:`PREEMPT`) that the scheduler (:mod:`.sched`) turns into
waits. File descriptors are small objects with ``write(bytes)`` and ``read(n) -> bytes | None``
(None: nothing yet, wait for the pipe); pipe ends are reference-counted across ``dup``/``close`` so a
reader sees end-of-file exactly when the last writer is gone, and a writer whose readers are all gone
gets :class:`BrokenPipe` (SIGPIPE, exit 141).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SIGNALS = {
    "HUP": 1,
    "INT": 2,
    "QUIT": 3,
    "KILL": 9,
    "USR1": 10,
    "USR2": 12,
    "PIPE": 13,
    "ALRM": 14,
    "TERM": 15,
    "CHLD": 17,
    "CONT": 18,
    "STOP": 19,
}
SIGNAL_NAMES = {num: name for name, num in SIGNALS.items()}
PIPE_CAPACITY = 65536


@dataclass(frozen=True, slots=True)
class Wait:
    """Resume the program once the clock reaches ``until_ns`` (None: only a signal wakes it)."""

    until_ns: int | None


@dataclass(frozen=True, slots=True)
class Signal:
    """A signal delivered to the program's main process: "TERM", "INT" or "HUP"."""

    name: str


class Block:
    """Why a job cannot go on."""

    __slots__ = ()


class Sleep(Block):
    __slots__ = ("until_ns",)

    def __init__(self, until_ns: int) -> None:
        self.until_ns = until_ns


class PipeRead(Block):
    __slots__ = ("pipe",)

    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe


class PipeWrite(Block):
    __slots__ = ("pipe",)

    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe


class JobWait(Block):
    """Wait until every one of ``procs`` is done; a trapped signal interrupts it if ``interruptible``."""

    __slots__ = ("interruptible", "procs")

    def __init__(self, procs: list[Any], interruptible: bool) -> None:
        self.procs = procs
        self.interruptible = interruptible


class _Forever(Block):
    __slots__ = ()


class _Preempt(Block):
    __slots__ = ()


FOREVER = _Forever()
PREEMPT = _Preempt()


class Interrupt:
    """Sent into a job whose interruptible wait a trapped signal cut short."""

    __slots__ = ("signum",)

    def __init__(self, signum: int) -> None:
        self.signum = signum


class BrokenPipe(Exception):
    """A write to a pipe nobody reads any more (SIGPIPE)."""


class Pipe:
    """An in-memory pipe with a bounded buffer."""

    __slots__ = ("buf", "readers", "writers")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.readers = 0
        self.writers = 0


class Fd:
    """An open file description."""

    __slots__ = ()
    pipe: Pipe | None = None

    def write(self, data: bytes) -> None:
        raise BrokenPipe  # not open for writing: like EBADF, the caller's problem

    def read(self, n: int) -> bytes | None:
        return b""

    def readline(self) -> bytes | None:
        """Up to and including the next newline; b"" at end of file, None when a pipe has nothing yet."""
        return b""

    def full(self) -> bool:
        return False

    def dup(self) -> Fd:
        return self

    def close(self) -> None:
        pass


class OutFn(Fd):
    """Output to a callback (the container log writer or an exec's capture buffer)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[bytes], None]) -> None:
        self.fn = fn

    def write(self, data: bytes) -> None:
        self.fn(data)


class Capture(Fd):
    """Output collected in memory (command substitution)."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data


class NullFd(Fd):
    """/dev/null: reads end at once, writes vanish."""

    __slots__ = ()

    def write(self, data: bytes) -> None:
        pass


class ZeroFd(NullFd):
    """/dev/zero (and, for our purposes, /dev/urandom): endless bytes."""

    __slots__ = ("byte",)

    def __init__(self, byte: bytes = b"\0") -> None:
        self.byte = byte

    def read(self, n: int) -> bytes | None:
        return self.byte * n


class InBuf(Fd):
    """Input from bytes read at open time (a file, a here-document, the process's stdin)."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def read(self, n: int) -> bytes | None:
        chunk = self.data[self.pos : self.pos + n]
        self.pos += len(chunk)
        return chunk

    def readline(self) -> bytes | None:
        end = self.data.find(b"\n", self.pos)
        end = len(self.data) if end < 0 else end + 1
        line = self.data[self.pos : end]
        self.pos = end
        return line


class FileOut(Fd):
    """Output appended to a file of the container filesystem on every write."""

    __slots__ = ("append_fn",)

    def __init__(self, append_fn: Callable[[bytes], None]) -> None:
        self.append_fn = append_fn

    def write(self, data: bytes) -> None:
        self.append_fn(data)


class PipeW(Fd):
    __slots__ = ("open", "pipe")

    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe
        self.open = True
        pipe.writers += 1

    def write(self, data: bytes) -> None:
        pipe = self.pipe
        assert pipe is not None
        if pipe.readers <= 0:
            raise BrokenPipe
        pipe.buf += data

    def full(self) -> bool:
        pipe = self.pipe
        assert pipe is not None
        return len(pipe.buf) >= PIPE_CAPACITY and pipe.readers > 0

    def dup(self) -> Fd:
        assert self.pipe is not None
        return PipeW(self.pipe)

    def close(self) -> None:
        if self.open and self.pipe is not None:
            self.open = False
            self.pipe.writers -= 1


class PipeR(Fd):
    __slots__ = ("open", "pipe")

    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe
        self.open = True
        pipe.readers += 1

    def read(self, n: int) -> bytes | None:
        pipe = self.pipe
        assert pipe is not None
        if pipe.buf:
            chunk = bytes(pipe.buf[:n])
            del pipe.buf[:n]
            return chunk
        return b"" if pipe.writers <= 0 else None

    def readline(self) -> bytes | None:
        pipe = self.pipe
        assert pipe is not None
        end = pipe.buf.find(b"\n")
        if end < 0:
            if pipe.writers > 0:
                return None
            end = len(pipe.buf)
        else:
            end += 1
        line = bytes(pipe.buf[:end])
        del pipe.buf[:end]
        return line

    def dup(self) -> Fd:
        assert self.pipe is not None
        return PipeR(self.pipe)

    def close(self) -> None:
        if self.open and self.pipe is not None:
            self.open = False
            self.pipe.readers -= 1
            if self.pipe.readers <= 0:
                self.pipe.buf.clear()


def make_pipe() -> tuple[PipeR, PipeW]:
    pipe = Pipe()
    return PipeR(pipe), PipeW(pipe)
