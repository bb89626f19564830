"""What every applet shares: the registry, option parsing, and reading and writing through fds.

An applet is ``fn(shell, argv)``: a plain function returning the exit status, or (registered with
:func:`gen_applet`) a generator that yields blocks while it waits on the clock or a pipe. Output to a
pipe goes through :func:`write`, which waits while the pipe is full; input through :func:`read_all`
or a loop over ``fd.read``/``fd.readline`` that yields :class:`~.io.PipeRead` when nothing is there yet.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from kubeharness.emulators.cri.shell.io import Block, Fd, InBuf, NullFd, PipeRead, PipeWrite
from kubeharness.emulators.cri.shell.vfs import VfsError

if TYPE_CHECKING:
    from kubeharness.emulators.cri.shell.interp import Shell

Job = Generator[Block, Any, int]
Applet = Callable[["Shell", list[str]], Any]
APPLETS: dict[str, tuple[Applet, bool]] = {}


def applet(*names: str) -> Callable[[Applet], Applet]:
    """Register a plain applet (returns its status without waiting)."""

    def register(fn: Applet) -> Applet:
        for name in names:
            APPLETS[name] = (fn, False)
        return fn

    return register


def gen_applet(*names: str) -> Callable[[Applet], Applet]:
    """Register an applet that is a generator of blocks."""

    def register(fn: Applet) -> Applet:
        for name in names:
            APPLETS[name] = (fn, True)
        return fn

    return register


def write(sh: Shell, data: bytes, num: int = 1) -> Generator[Block, Any, None]:
    """Write to fd ``num``, waiting while a pipe is full."""
    fd = sh.fds[num]
    if fd is None or not data:
        return
    fd.write(data)
    while fd.full():
        yield PipeWrite(fd.pipe)  # type: ignore[arg-type]


def read_all(sh: Shell, fd_or_num: Fd | int) -> Generator[Block, Any, bytes]:
    """Everything until end of file."""
    fd = sh.fds[fd_or_num] if isinstance(fd_or_num, int) else fd_or_num
    if fd is None:
        return b""
    chunks: list[bytes] = []
    while True:
        chunk = fd.read(65536)
        if chunk is None:
            yield PipeRead(fd.pipe)  # type: ignore[arg-type]
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def open_input(sh: Shell, name: str, path: str) -> Fd | None:
    """An input fd for ``path`` ("-" is stdin); None (with busybox's message printed) when it cannot open."""
    if path == "-":
        fd = sh.fds[0]
        return fd.dup() if fd is not None else NullFd()
    try:
        info = sh.fs.stat(path, sh.cwd)
        if info.kind == "dev":
            return sh.open_device(info.device)
        if info.kind == "dir":
            sh.err(f"{name}: read error: Is a directory\n")
            return None
        return InBuf(sh.fs.read(path, sh.cwd))
    except VfsError as exc:
        sh.err(f"{name}: can't open '{path}': {exc}\n")
        return None


def parse_opts(
    sh: Shell, name: str, argv: list[str], flags: str, with_arg: str = ""
) -> tuple[dict[str, str], list[str]] | None:
    """getopt-style: combined flags, options with arguments, ``--``. None after an unknown option."""
    opts: dict[str, str] = {}
    operands: list[str] = []
    i = 1
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            operands.extend(argv[i:])
            break
        if len(arg) < 2 or arg[0] != "-":
            operands.append(arg)
            continue
        j = 1
        while j < len(arg):
            flag = arg[j]
            if flag in with_arg:
                value = arg[j + 1 :]
                if not value:
                    if i >= len(argv):
                        sh.err(f"{name}: option requires an argument -- '{flag}'\n")
                        return None
                    value = argv[i]
                    i += 1
                opts[flag] = value
                break
            if flag not in flags:
                unknown(sh, name, flag)
                return None
            opts[flag] = ""
            j += 1
    return opts, operands


def unknown(sh: Shell, name: str, flag: str) -> int:
    sh.err(f"{name}: unrecognized option: {flag}\n")
    sh.missing(f"option -{flag} of {name}")
    return 1


def shell_quote(text: str) -> str:
    if text and all(c.isalnum() or c in "@%+=:,./-_" for c in text):
        return text
    return "'" + text.replace("'", "'\"'\"'") + "'"


_ESCAPES = {"a": "\a", "b": "\b", "e": "\x1b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}


def escapes(text: str, octal_needs_zero: bool = True) -> tuple[str, bool]:
    """Backslash escapes as ``echo -e`` and ``printf %b`` read them; also whether ``\\c`` cut the output."""
    if "\\" not in text:
        return text, False
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c != "\\" or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt == "c":
            return "".join(out), True
        elif nxt == "0" or (nxt in "1234567" and not octal_needs_zero):
            j = i + 2 if nxt == "0" and octal_needs_zero else i + 1
            end = j
            while end < n and end < j + 3 and text[end] in "01234567":
                end += 1
            out.append(chr(int(text[j:end] or "0", 8) & 0xFF))
            i = end
        elif nxt == "x":
            end = i + 2
            while end < n and end < i + 4 and text[end] in "0123456789abcdefABCDEF":
                end += 1
            if end == i + 2:
                out.append("\\x")
                i += 2
            else:
                out.append(chr(int(text[i + 2 : end], 16)))
                i = end
        else:
            out.append("\\" + nxt)
            i += 2
    return "".join(out), False


def unbackslash(text: str) -> str:
    """``read`` without -r: a backslash quotes the next character."""
    if "\\" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def enc(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def dec(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")
