"""Shell builtins: the commands that change the shell itself (cd, export, set, trap, wait, exec, ...).

``SYNC`` maps names to plain functions ``(shell, argv) -> status``; ``GEN`` to generator functions for
builtins that may wait (``wait``, ``read`` from a pipe) or run code (``eval``, ``.``, ``exec``,
``command``). ``echo``, ``printf``, ``test``/``[``, ``true``, ``false``, ``pwd`` and ``kill`` are builtins
in busybox ash too; their code lives with the applets of the same name.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from kubeharness.emulators.cri.shell import applets
from kubeharness.emulators.cri.shell.expand import ifs_split
from kubeharness.emulators.cri.shell.io import SIGNAL_NAMES, SIGNALS, Block, Interrupt, JobWait, PipeRead
from kubeharness.emulators.cri.shell.parser import is_name, parse
from kubeharness.emulators.cri.shell.vfs import VfsError

if TYPE_CHECKING:
    from kubeharness.emulators.cri.shell.interp import Shell

Job = Generator[Block, Any, int]
SYNC: dict[str, Callable[[Shell, list[str]], int]] = {}
GEN: dict[str, Callable[[Shell, list[str]], Job]] = {}
_OPTION_NAMES = {"errexit": "e", "noglob": "f", "nounset": "u", "xtrace": "x", "pipefail": "pipefail"}


def _sync(*names: str) -> Callable[[Callable[[Shell, list[str]], int]], Callable[[Shell, list[str]], int]]:
    def register(fn: Callable[[Shell, list[str]], int]) -> Callable[[Shell, list[str]], int]:
        for name in names:
            SYNC[name] = fn
        return fn

    return register


def _gen(*names: str) -> Callable[[Callable[[Shell, list[str]], Job]], Callable[[Shell, list[str]], Job]]:
    def register(fn: Callable[[Shell, list[str]], Job]) -> Callable[[Shell, list[str]], Job]:
        for name in names:
            GEN[name] = fn
        return fn

    return register


def _exceptions() -> Any:
    from kubeharness.emulators.cri.shell import interp

    return interp


@_sync(":", "true")
def colon(sh: Shell, argv: list[str]) -> int:
    return 0


@_sync("false")
def false(sh: Shell, argv: list[str]) -> int:
    return 1


for _name in ("echo", "printf", "test", "[", "pwd", "kill"):
    SYNC[_name] = applets.APPLETS[_name][0]


@_sync("cd")
def cd(sh: Shell, argv: list[str]) -> int:
    args = [a for a in argv[1:] if a not in ("-L", "-P")]
    if not args:
        target = sh.vars.get("HOME", "/")
    elif args[0] == "-":
        target = sh.vars.get("OLDPWD", sh.cwd)
        sh.out((target + "\n").encode())
    else:
        target = args[0]
    try:
        resolved = sh.fs.resolve(target, sh.cwd)
        if not sh.fs.is_dir(resolved):
            raise VfsError("Not a directory")
    except VfsError as exc:
        # As in ash, a failed cd is an error that ends a non-interactive shell.
        sh.err(f"sh: cd: can't cd to {target}: {exc}\n")
        raise _exceptions().ExitShell(2) from None
    sh.vars["OLDPWD"] = sh.cwd
    sh.cwd = resolved
    sh.vars["PWD"] = sh.cwd
    return 0


@_sync("exit")
def exit_(sh: Shell, argv: list[str]) -> int:
    status = sh.status
    if len(argv) > 1:
        try:
            status = int(argv[1]) & 0xFF
        except ValueError:
            sh.err(f"sh: exit: Illegal number: {argv[1]}\n")
            status = 2
    raise _exceptions().ExitShell(status)


@_sync("return")
def return_(sh: Shell, argv: list[str]) -> int:
    status = int(argv[1]) & 0xFF if len(argv) > 1 and argv[1].lstrip("-").isdigit() else sh.status
    if not sh.locals:
        raise _exceptions().ExitShell(status)
    raise _exceptions().ReturnFromFunction(status)


@_sync("break", "continue")
def loop_control(sh: Shell, argv: list[str]) -> int:
    levels = 1
    if len(argv) > 1:
        if not argv[1].isdigit() or int(argv[1]) < 1:
            sh.err(f"sh: {argv[0]}: Illegal number: {argv[1]}\n")
            raise _exceptions().ExitShell(2)
        levels = int(argv[1])
    if not sh.loop_depth:
        return 0
    raise _exceptions().LoopControl(argv[0] == "break", min(levels, sh.loop_depth))


@_sync("export", "readonly")
def export(sh: Shell, argv: list[str]) -> int:
    names = [a for a in argv[1:] if a != "-p"]
    if not names:
        marked = sh.exported if argv[0] == "export" else sh.readonly
        for name in sorted(marked):
            if name in sh.vars:
                sh.out(f"{argv[0]} {name}={applets.shell_quote(sh.vars[name])}\n".encode())
        return 0
    for item in names:
        name, eq, value = item.partition("=")
        if not is_name(name):
            sh.err(f"sh: {argv[0]}: {name}: bad variable name\n")
            return 2
        if eq:
            sh.setvar(name, value)
        (sh.exported if argv[0] == "export" else sh.readonly).add(name)
    return 0


@_sync("local")
def local(sh: Shell, argv: list[str]) -> int:
    if not sh.locals:
        sh.err("sh: local: not in a function\n")
        return 2
    frame = sh.locals[-1]
    for item in argv[1:]:
        name, eq, value = item.partition("=")
        if name not in frame:
            frame[name] = sh.vars.get(name)
        if eq:
            sh.setvar(name, value)
    return 0


@_sync("unset")
def unset(sh: Shell, argv: list[str]) -> int:
    functions = "-f" in argv[1:]
    for name in argv[1:]:
        if name in ("-f", "-v"):
            continue
        if functions:
            sh.funcs.pop(name, None)
        else:
            sh.unsetvar(name)
    return 0


def set_option(sh: Shell, flag: str, on: bool) -> bool:
    flag = _OPTION_NAMES.get(flag, flag)
    if flag == "e":
        sh.errexit = on
    elif flag == "x":
        sh.xtrace = on
    elif flag == "u":
        sh.nounset = on
    elif flag == "f":
        sh.noglob = on
    elif flag == "pipefail":
        sh.pipefail = on
    elif flag in ("m", "b", "C", "n", "v", "a", "h", "monitor", "notify", "noclobber", "allexport", "vi", "emacs"):
        sh.missing(f"set option {flag}")
    else:
        return False
    return True


@_sync("set")
def set_(sh: Shell, argv: list[str]) -> int:
    if len(argv) == 1:
        for name in sorted(sh.vars):
            sh.out(f"{name}={applets.shell_quote(sh.vars[name])}\n".encode())
        return 0
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            sh.args = argv[i:]
            return 0
        if arg in ("-o", "+o"):
            if i + 1 >= len(argv):
                for long, short in _OPTION_NAMES.items():
                    on = sh.param("-") or ""
                    state = sh.pipefail if short == "pipefail" else short in on
                    sh.out(f"{long:<16}{'on' if state else 'off'}\n".encode())
                return 0
            if not set_option(sh, argv[i + 1], arg[0] == "-"):
                sh.err(f"sh: set: illegal option -o {argv[i + 1]}\n")
                return 2
            i += 2
            continue
        if len(arg) > 1 and arg[0] in "-+":
            for flag in arg[1:]:
                if not set_option(sh, flag, arg[0] == "-"):
                    sh.err(f"sh: set: illegal option -{flag}\n")
                    return 2
            i += 1
            continue
        sh.args = argv[i:]
        return 0
    return 0


@_sync("shift")
def shift(sh: Shell, argv: list[str]) -> int:
    count = int(argv[1]) if len(argv) > 1 and argv[1].isdigit() else 1
    if count > len(sh.args):
        sh.err("sh: shift: can't shift that many\n")
        return 1
    sh.args = sh.args[count:]
    return 0


def parse_signal(text: str) -> int | None:
    name = text.upper().removeprefix("SIG")
    if name.isdigit():
        num = int(name)
        return num if num == 0 or num in SIGNAL_NAMES else None
    if name == "EXIT":
        return 0
    return SIGNALS.get(name)


@_sync("trap")
def trap(sh: Shell, argv: list[str]) -> int:
    args = argv[1:]
    if args and args[0] == "--":
        args = args[1:]
    if not args or args == ["-p"]:
        for num, text in sorted(sh.traps.items()):
            name = "EXIT" if num == 0 else SIGNAL_NAMES.get(num, str(num))
            sh.out(f"trap -- {applets.shell_quote(text)} {name}\n".encode())
        return 0
    if len(args) == 1 or args[0].isdigit():
        action: str | None = None
        signals = args if args[0].isdigit() else args[1:]
    else:
        action = None if args[0] == "-" else args[0]
        signals = args[1:]
    status = 0
    for text in signals:
        sig = parse_signal(text)
        if sig is None:
            sh.err(f"sh: trap: {text}: bad trap\n")
            status = 1
            continue
        if action is None:
            sh.traps.pop(sig, None)
        else:
            sh.traps[sig] = action
            if action:
                parse(action)  # parsed now so that running the handler costs nothing
    return status


@_gen("wait")
def wait(sh: Shell, argv: list[str]) -> Job:
    if len(argv) == 1:
        procs = [p for p in sh.jobs if not p.done]
    else:
        procs = []
        for text in argv[1:]:
            pid = int(text) if text.lstrip("%").isdigit() else -1
            found = [p for p in sh.jobs if p.pid == pid]
            if not found:
                sh.err(f"sh: wait: pid {text} is not a child of this shell\n")
                return 127
            procs.extend(found)
    if any(not p.done for p in procs):
        resumed = yield JobWait(procs, True)
        if isinstance(resumed, Interrupt):
            return 128 + resumed.signum
    if len(argv) == 1:
        sh.jobs = [p for p in sh.jobs if not p.done]
        return 0
    return procs[-1].status if procs else 0


@_gen("read")
def read(sh: Shell, argv: list[str]) -> Job:
    raw = False
    names: list[str] = []
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "-r":
            raw = True
        elif arg == "-p" and i + 1 < len(argv):
            i += 1
        elif arg in ("-t", "-n", "-u", "-s", "-d") or (arg.startswith("-") and len(arg) > 1):
            sh.missing(f"read option {arg}")
            sh.err(f"sh: read: {arg}: not supported\n")
            return 2
        else:
            names.append(arg)
        i += 1
    names = names or ["REPLY"]
    fd = sh.fds[0]
    text = ""
    eof = False
    while True:
        if fd is None:
            eof = True
            break
        line = fd.readline()
        if line is None:
            yield PipeRead(fd.pipe)  # type: ignore[arg-type]
            continue
        if not line.endswith(b"\n"):
            eof = True
        chunk = line.decode("utf-8", "surrogateescape").removesuffix("\n")
        if not raw and chunk.endswith("\\") and not eof:
            text += chunk[:-1]
            continue
        text += chunk
        break
    if not raw:
        text = applets.unbackslash(text)
    ifs = sh.vars.get("IFS", " \t\n")
    white = "".join(c for c in ifs if c in " \t\n")
    rest = text.strip(white)
    for index, name in enumerate(names):
        if index == len(names) - 1:
            sh.setvar(name, rest.rstrip(white) if name != "REPLY" or len(names) > 1 else text)
            break
        pieces, _, _ = ifs_split(rest, ifs)
        first = pieces[0] if pieces else ""
        sh.setvar(name, first)
        rest = rest[len(first) :].lstrip(white)
        if rest and rest[0] in ifs and rest[0] not in white:
            rest = rest[1:].lstrip(white)
    return 1 if eof and not text else (1 if eof else 0)


@_gen("eval")
def eval_(sh: Shell, argv: list[str]) -> Job:
    if len(argv) == 1:
        return 0
    return (yield from sh.run_text(" ".join(argv[1:])))


@_gen(".", "source")
def source(sh: Shell, argv: list[str]) -> Job:
    if len(argv) < 2:
        sh.err(f"sh: {argv[0]}: filename argument required\n")
        return 2
    path = argv[1]
    if "/" not in path:
        for directory in sh.vars.get("PATH", "").split(":"):
            if sh.fs.exists(f"{directory}/{path}"):
                path = f"{directory}/{path}"
                break
    try:
        text = sh.fs.read(path, sh.cwd).decode("utf-8", "surrogateescape")
    except VfsError as exc:
        sh.err(f"sh: {argv[0]}: can't open '{argv[1]}': {exc}\n")
        raise _exceptions().ExitShell(2) from None
    saved = sh.args
    if len(argv) > 2:
        sh.args = argv[2:]
    try:
        return (yield from sh.run_text(text))
    finally:
        if len(argv) > 2:
            sh.args = saved


@_gen("exec")
def exec_(sh: Shell, argv: list[str]) -> Job:
    args = argv[1:]
    if args and args[0] == "--":
        args = args[1:]
    if not args:
        return 0
    if sh.proc is not None and sh.proc.sh is sh:
        sh.traps = {sig: "" for sig, action in sh.traps.items() if action == "" and sig != 0}
    status = yield from sh.run_external(args, as_image=True)
    raise _exceptions().ExitShell(status, run_exit_trap=False)


def describe(sh: Shell, name: str) -> tuple[str, str] | None:
    """(kind, text) for ``command -v`` / ``type``: alias-free, so function, builtin or a path."""
    if name in sh.funcs:
        return ("function", name)
    if name in SYNC or name in GEN:
        return ("builtin", name)
    if "/" not in name:
        for directory in sh.vars.get("PATH", "").split(":"):
            path = f"{directory or '.'}/{name}"
            if sh._exec_target(path) is not None:
                return ("file", path)
        return None
    return ("file", name) if sh._exec_target(name) is not None else None


@_gen("command")
def command(sh: Shell, argv: list[str]) -> Job:
    args = argv[1:]
    verbose = ""
    while args and args[0] in ("-v", "-V", "-p"):
        verbose = args[0] if args[0] != "-p" else verbose
        args = args[1:]
    if not args:
        return 0
    if verbose:
        status = 0
        for name in args:
            found = describe(sh, name)
            if found is None:
                if verbose == "-V":
                    sh.err(f"sh: {name}: not found\n")
                status = 127 if verbose == "-V" else 1
            elif verbose == "-v":
                sh.out((found[1] + "\n").encode())
            else:
                sh.out(_type_line(name, found).encode())
        return status
    name = args[0]
    if name in SYNC:
        return SYNC[name](sh, args)
    if name in GEN:
        return (yield from GEN[name](sh, args))
    return (yield from sh.run_external(args))


def _type_line(name: str, found: tuple[str, str]) -> str:
    if found[0] == "function":
        return f"{name} is a function\n"
    if found[0] == "builtin":
        special = "special " if name in ("exit", "export", "set", "trap", "eval", "exec") else ""
        return f"{name} is a {special}shell builtin\n"
    return f"{name} is {found[1]}\n"


@_sync("type")
def type_(sh: Shell, argv: list[str]) -> int:
    status = 0
    for name in argv[1:]:
        found = describe(sh, name)
        if found is None:
            sh.out(f"{name}: not found\n".encode())
            status = 127
        else:
            sh.out(_type_line(name, found).encode())
    return status


@_sync("hash", "umask", "ulimit", "times", "jobs")
def noop(sh: Shell, argv: list[str]) -> int:
    if argv[0] == "umask" and len(argv) == 1:
        sh.out(b"0022\n")
    elif argv[0] == "ulimit" and len(argv) <= 2:
        sh.out(b"unlimited\n")
    elif argv[0] == "times":
        sh.out(b"0m0.00s 0m0.00s\n0m0.00s 0m0.00s\n")
    return 0


@_sync("getopts", "alias", "unalias", "fg", "bg", "let")
def unsupported(sh: Shell, argv: list[str]) -> int:
    sh.missing(f"builtin {argv[0]}")
    sh.err(f"sh: {argv[0]}: not supported\n")
    return 2


__all__ = ["GEN", "SYNC", "set_option"]
