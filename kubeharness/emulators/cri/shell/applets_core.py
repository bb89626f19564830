"""Applets about text, time and identity: echo, printf, test, sleep, date, env, id, kill, seq, yes, top, ...

``top`` runs until it is killed and prints nothing (its screen output needs a terminal, which a
container log is not); ``yes`` writing to something other than a pipe writes a 4 KiB chunk per
millisecond of clock time, so a stray ``yes`` cannot hang the emulator.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from kubeharness.emulators.cri.shell.appletbase import (
    Job,
    applet,
    dec,
    enc,
    escapes,
    gen_applet,
    parse_opts,
    unknown,
    write,
)
from kubeharness.emulators.cri.shell.io import FOREVER, SIGNAL_NAMES, SIGNALS, Sleep
from kubeharness.emulators.cri.shell.vfs import VfsError

if TYPE_CHECKING:
    from kubeharness.emulators.cri.shell.interp import Shell

NS = 1_000_000_000


@applet("true")
def true(sh: Shell, argv: list[str]) -> int:
    return 0


@applet("false")
def false(sh: Shell, argv: list[str]) -> int:
    return 1


@applet("echo")
def echo(sh: Shell, argv: list[str]) -> int:
    newline, interpret = True, False
    i = 1
    while i < len(argv) and len(argv[i]) > 1 and argv[i][0] == "-" and all(c in "neE" for c in argv[i][1:]):
        for c in argv[i][1:]:
            if c == "n":
                newline = False
            else:
                interpret = c == "e"
        i += 1
    text = " ".join(argv[i:])
    if interpret:
        text, cut = escapes(text)
        if cut:
            newline = False
    sh.out(enc(text + "\n" if newline else text))
    return 0


@applet("pwd")
def pwd(sh: Shell, argv: list[str]) -> int:
    sh.out(enc(sh.cwd + "\n"))
    return 0


_CONV = re.compile(r"%([-+ 0#]*)(\*|\d+)?(?:\.(\*|\d*))?([diouxXeEfgGcsb%])")


def _number(sh: Shell, text: str, name: str) -> tuple[int, bool]:
    if text[:1] in ("'", '"'):
        return (ord(text[1]) if len(text) > 1 else 0), True
    try:
        stripped = text.strip()
        if re.fullmatch(r"[-+]?0[xX][0-9a-fA-F]+", stripped):
            return int(stripped, 16), True
        if re.fullmatch(r"[-+]?0[0-7]+", stripped):
            return int(stripped, 8), True
        return int(stripped or "0"), True
    except ValueError:
        sh.err(f"{name}: invalid number '{text}'\n")
        return 0, False


def _float(sh: Shell, text: str, name: str) -> tuple[float, bool]:
    try:
        return float(text or "0"), True
    except ValueError:
        sh.err(f"{name}: invalid number '{text}'\n")
        return 0.0, False


@applet("printf")
def printf(sh: Shell, argv: list[str]) -> int:
    if len(argv) < 2:
        sh.err("printf: usage: printf FORMAT [ARGUMENT...]\n")
        return 1
    fmt, args = argv[1], argv[2:]
    status = 0
    out: list[str] = []
    index = 0
    while True:
        pos = 0
        used = False
        stop = False
        for m in _CONV.finditer(fmt):
            out.append(escapes(fmt[pos : m.start()], False)[0])
            pos = m.end()
            flags, width, prec, conv = m.group(1), m.group(2) or "", m.group(3), m.group(4)
            if conv == "%":
                out.append("%")
                continue

            def take() -> str:
                nonlocal index, used
                used = True
                if index < len(args):
                    index += 1
                    return args[index - 1]
                return ""

            if width == "*":
                width = str(_number(sh, take(), "printf")[0])
            if prec == "*":
                prec = str(_number(sh, take(), "printf")[0])
            spec = "%" + flags + width + ("." + prec if prec is not None else "")
            arg = take()
            if conv in "di":
                value, ok = _number(sh, arg, "printf")
                out.append((spec + "d") % value)
            elif conv in "ouxX":
                value, ok = _number(sh, arg, "printf")
                out.append((spec + ("d" if conv == "u" else conv)) % (value if conv != "u" else value & (2**64 - 1)))
            elif conv in "eEfgG":
                fvalue, ok = _float(sh, arg, "printf")
                out.append((spec + conv) % fvalue)
            elif conv == "c":
                ok = True
                out.append((spec + "s") % arg[:1])
            elif conv == "b":
                ok = True
                text, stop = escapes(arg)
                out.append((spec + "s") % text)
            else:
                ok = True
                out.append((spec + "s") % arg)
            if not ok:
                status = 1
            if stop:
                break
        if stop:
            break
        out.append(escapes(fmt[pos:], False)[0] if not stop else "")
        if not used or index >= len(args):
            break
    text = "".join(out)
    if "\\c" in fmt:
        text = text.split("\\c")[0]
    sh.out(enc(text))
    return status


# -- test / [ ---------------------------------------------------------------------------------------

_UNARY = frozenset(f"-{c}" for c in "efdsrwxznLhpSbctgukOG")
_BINARY = frozenset(["=", "==", "!=", "-eq", "-ne", "-lt", "-le", "-gt", "-ge", "-nt", "-ot", "-ef", "<", ">"])


class _TestError(Exception):
    pass


@applet("test", "[")
def test(sh: Shell, argv: list[str]) -> int:
    args = argv[1:]
    if argv[0] == "[":
        if not args or args[-1] != "]":
            sh.err("sh: [: missing ]\n")
            return 2
        args = args[:-1]
    try:
        return 0 if _evaluate(sh, args) else 1
    except _TestError as exc:
        sh.err(f"sh: {argv[0]}: {exc}\n")
        return 2


def _evaluate(sh: Shell, args: list[str]) -> bool:
    n = len(args)
    if n == 0:
        return False
    if n == 1:
        return args[0] != ""
    if n == 2:
        if args[0] == "!":
            return args[1] == ""
        if args[0] in _UNARY:
            return _unary(sh, args[0], args[1])
        raise _TestError(f"{args[0]}: unknown operand")
    if n == 3:
        if args[1] in _BINARY:
            return _binary(sh, args[0], args[1], args[2])
        if args[1] in ("-a", "-o"):
            left, right = args[0] != "", args[2] != ""
            return (left and right) if args[1] == "-a" else (left or right)
        if args[0] == "!":
            return not _evaluate(sh, args[1:])
        if args[0] == "(" and args[2] == ")":
            return args[1] != ""
        raise _TestError(f"{args[1]}: unknown operand")
    if n == 4 and args[0] == "!":
        return not _evaluate(sh, args[1:])
    parser = _TestParser(sh, args)
    result = parser.or_()
    if parser.i != len(args):
        raise _TestError(f"{args[parser.i]}: unknown operand")
    return result


class _TestParser:
    def __init__(self, sh: Shell, args: list[str]) -> None:
        self.sh = sh
        self.a = args
        self.i = 0

    def peek(self, k: int = 0) -> str | None:
        return self.a[self.i + k] if self.i + k < len(self.a) else None

    def or_(self) -> bool:
        value = self.and_()
        while self.peek() == "-o":
            self.i += 1
            right = self.and_()
            value = value or right
        return value

    def and_(self) -> bool:
        value = self.not_()
        while self.peek() == "-a":
            self.i += 1
            right = self.not_()
            value = value and right
        return value

    def not_(self) -> bool:
        if self.peek() == "!":
            self.i += 1
            return not self.not_()
        return self.primary()

    def primary(self) -> bool:
        tok = self.peek()
        if tok is None:
            raise _TestError("argument expected")
        if tok == "(":
            self.i += 1
            value = self.or_()
            if self.peek() != ")":
                raise _TestError("missing )")
            self.i += 1
            return value
        nxt = self.peek(1)
        if nxt is not None and nxt in _BINARY and self.peek(2) is not None:
            self.i += 3
            return _binary(self.sh, tok, nxt, self.a[self.i - 1])
        if tok in _UNARY and nxt is not None:
            self.i += 2
            return _unary(self.sh, tok, nxt)
        self.i += 1
        return tok != ""


def _int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise _TestError(f"invalid number '{text}'") from None


def _binary(sh: Shell, left: str, op: str, right: str) -> bool:
    if op in ("=", "=="):
        return left == right
    if op == "!=":
        return left != right
    if op == "<":
        return left < right
    if op == ">":
        return left > right
    if op in ("-nt", "-ot", "-ef"):
        try:
            sa, sb = sh.fs.stat(left, sh.cwd), sh.fs.stat(right, sh.cwd)
        except VfsError:
            return False
        if op == "-ef":
            return sh.fs.resolve(left, sh.cwd) == sh.fs.resolve(right, sh.cwd)
        return sa.mtime_ns > sb.mtime_ns if op == "-nt" else sa.mtime_ns < sb.mtime_ns
    a, b = _int(left), _int(right)
    return {"-eq": a == b, "-ne": a != b, "-lt": a < b, "-le": a <= b, "-gt": a > b, "-ge": a >= b}[op]


def _unary(sh: Shell, op: str, arg: str) -> bool:
    if op == "-z":
        return arg == ""
    if op == "-n":
        return arg != ""
    if op == "-t":
        return False
    try:
        info = sh.fs.stat(arg, sh.cwd, follow=op not in ("-L", "-h"))
    except VfsError:
        return False
    if op == "-e":
        return True
    if op == "-f":
        return info.kind == "file"
    if op == "-d":
        return info.kind == "dir"
    if op == "-s":
        return info.size > 0
    if op in ("-L", "-h"):
        return info.kind == "link"
    if op == "-c":
        return info.kind == "dev"
    if op in ("-r", "-w", "-x"):
        return _access(sh, info.mode, info.readonly, bool(info.host_path), op[1])
    # -O and -G: the container owns what it sees; -p -S -b -g -u -k: no such files here
    return op in ("-O", "-G")


def _access(sh: Shell, mode: int, readonly: bool, writable_layer: bool, what: str) -> bool:
    if what == "w" and readonly:
        return False
    if sh.m.uid == 0:
        return what != "x" or bool(mode & 0o111)
    shift = 6 if writable_layer else 0  # files the container created are its own; image files are root's
    bit = {"r": 4, "w": 2, "x": 1}[what]
    return bool(mode >> shift & bit)


# -- time -------------------------------------------------------------------------------------------


_DURATION = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@gen_applet("sleep")
def sleep(sh: Shell, argv: list[str]) -> Job:
    if len(argv) < 2:
        sh.err("Usage: sleep [N]...\n")
        return 1
    total = 0
    for arg in argv[1:]:
        if arg in ("inf", "infinity"):
            yield FOREVER
            return 0
        match = _DURATION.match(arg)
        if match is None:
            sh.err(f"sleep: invalid number '{arg}'\n")
            return 1
        total += round(float(match.group(1)) * _UNITS[match.group(2)] * NS)
    if total > 0:
        yield Sleep(sh.m.now_ns() + total)
    return 0


def format_date(fmt: str, now_ns: int) -> str:
    seconds, nanos = divmod(now_ns, NS)
    tm = time.gmtime(seconds)

    def directive(m: re.Match[str]) -> str:
        c = m.group(1)
        if c == "N":
            return f"{nanos:09d}"
        if c == "s":
            return str(seconds)
        if c == "z":
            return "+0000"
        if c == "Z":
            return "UTC"
        if c == "e":
            return f"{tm.tm_mday:2d}"
        if c == "%":
            return "%"
        if c == "n":
            return "\n"
        if c == "t":
            return "\t"
        return time.strftime("%" + c, tm)

    return re.sub(r"%([a-zA-Z%])", directive, fmt)


@applet("date")
def date(sh: Shell, argv: list[str]) -> int:
    fmt = "%a %b %e %H:%M:%S %Z %Y"
    for arg in argv[1:]:
        if arg.startswith("+"):
            fmt = arg[1:]
        elif arg in ("-u", "--utc"):
            continue
        elif arg == "-I":
            fmt = "%Y-%m-%d"
        elif arg == "-R":
            fmt = "%a, %d %b %Y %H:%M:%S +0000"
        else:
            if arg.startswith("-"):
                return unknown(sh, "date", arg.lstrip("-")[:1] or "-")
            sh.err(f"date: invalid date '{arg}'\n")
            sh.missing("date: setting the date")
            return 1
    sh.out(enc(format_date(fmt, sh.m.now_ns()) + "\n"))
    return 0


# -- identity and environment -----------------------------------------------------------------------


def _names(sh: Shell, path: str) -> dict[int, str]:
    try:
        text = dec(sh.fs.read(path))
    except VfsError:
        return {}
    names: dict[int, str] = {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) > 2 and fields[2].isdigit():
            names.setdefault(int(fields[2]), fields[0])
    return names


@applet("id")
def id_(sh: Shell, argv: list[str]) -> int:
    parsed = parse_opts(sh, "id", argv, "ugGnr")
    if parsed is None:
        return 1
    opts, operands = parsed
    if operands:
        sh.missing("id of another user")
        sh.err(f"id: unknown user {operands[0]}\n")
        return 1
    users, groups = _names(sh, "/etc/passwd"), _names(sh, "/etc/group")
    m = sh.m
    all_groups = [m.gid] + [g for g in m.groups if g != m.gid]

    def show(num: int, names: dict[int, str]) -> str:
        if "n" in opts:
            return names.get(num, str(num))
        return str(num)

    if "u" in opts:
        sh.out(enc(show(m.uid, users) + "\n"))
    elif "g" in opts:
        sh.out(enc(show(m.gid, groups) + "\n"))
    elif "G" in opts:
        sh.out(enc(" ".join(show(g, groups) for g in all_groups) + "\n"))
    else:

        def full(num: int, names: dict[int, str]) -> str:
            return f"{num}({names[num]})" if num in names else str(num)

        text = f"uid={full(m.uid, users)} gid={full(m.gid, groups)} groups=" + ",".join(
            full(g, groups) for g in all_groups
        )
        sh.out(enc(text + "\n"))
    return 0


@applet("whoami")
def whoami(sh: Shell, argv: list[str]) -> int:
    name = _names(sh, "/etc/passwd").get(sh.m.uid)
    if name is None:
        sh.err(f"whoami: unknown uid {sh.m.uid}\n")
        return 1
    sh.out(enc(name + "\n"))
    return 0


@applet("hostname")
def hostname(sh: Shell, argv: list[str]) -> int:
    args = argv[1:]
    if args and args[0] == "-s":
        sh.out(enc(sh.m.hostname.split(".")[0] + "\n"))
        return 0
    if args and args[0].startswith("-"):
        return unknown(sh, "hostname", args[0][1:2])
    if args:
        sh.err("hostname: sethostname: Operation not permitted\n")
        return 1
    sh.out(enc(sh.m.hostname + "\n"))
    return 0


@applet("uname")
def uname(sh: Shell, argv: list[str]) -> int:
    parsed = parse_opts(sh, "uname", argv, "asnrvmop")
    if parsed is None:
        return 1
    opts = parsed[0] or {"s": ""}
    values = {
        "s": "Linux",
        "n": sh.m.hostname,
        "r": "6.1.0",
        "v": "#1 SMP",
        "m": "x86_64",
        "o": "GNU/Linux",
        "p": "unknown",
    }
    keys = "snrvmo" if "a" in opts else [k for k in "snrvmpo" if k in opts]
    sh.out(enc(" ".join(values[k] for k in keys) + "\n"))
    return 0


@gen_applet("env", "printenv")
def env(sh: Shell, argv: list[str]) -> Job:
    if argv[0] == "printenv":
        environ = sh.environ()
        if len(argv) > 1:
            found = [environ[n] for n in argv[1:] if n in environ]
            sh.out(enc("".join(v + "\n" for v in found)))
            return 0 if len(found) == len(argv) - 1 else 1
        sh.out(enc("".join(f"{k}={v}\n" for k, v in environ.items())))
        return 0
    child = sh.fork()
    args = argv[1:]
    while args and args[0].startswith("-") and args[0] != "-":
        flag = args.pop(0)
        if flag in ("-i", "--ignore-environment"):
            child.vars = {k: v for k, v in child.vars.items() if k not in child.exported}
            child.exported = set()
        elif flag == "-u" and args:
            child.vars.pop(args.pop(0), None)
        elif flag == "--":
            break
        else:
            child.close_fds()
            return unknown(sh, "env", flag[1:2])
    if args and args[0] == "-":
        args.pop(0)
        child.vars = {k: v for k, v in child.vars.items() if k not in child.exported}
        child.exported = set()
    while args and "=" in args[0] and not args[0].startswith("="):
        name, _, value = args.pop(0).partition("=")
        child.vars[name] = value
        child.exported.add(name)
    if not args:
        text = "".join(f"{k}={v}\n" for k, v in child.environ().items())
        child.close_fds()
        yield from write(sh, enc(text))
        return 0
    return int((yield from child.as_process(child.run_external(args))))


# -- processes --------------------------------------------------------------------------------------


@applet("kill")
def kill(sh: Shell, argv: list[str]) -> int:
    args = argv[1:]
    signum = SIGNALS["TERM"]
    if args and args[0] == "-l":
        sh.out(enc(" ".join(SIGNAL_NAMES[n] for n in sorted(SIGNAL_NAMES)) + "\n"))
        return 0
    if args and args[0] in ("-s", "-n") and len(args) > 1:
        text = args[1]
        args = args[2:]
    elif (
        (args
        and args[0].startswith("-")
        and len(args[0]) > 1
        and not args[0][1:].isdigit())
        or (args and args[0].startswith("-") and len(args) > 1 and args[0][1:].isdigit())
    ):
        text = args[0][1:]
        args = args[1:]
    else:
        text = ""
    if text:
        from kubeharness.emulators.cri.shell.builtins import parse_signal

        parsed = parse_signal(text)
        if parsed is None:
            sh.err(f"sh: kill: bad signal name '{text}'\n")
            return 1
        signum = parsed
    if not args:
        sh.err("kill: usage: kill [-s SIGNAL | -SIGNAL] PID...\n")
        return 1
    status = 0
    for target in args:
        try:
            pid = int(target.lstrip("%"))
        except ValueError:
            sh.err(f"sh: kill: invalid number '{target}'\n")
            status = 1
            continue
        sched = sh.sched
        if pid in (0, -1):
            me = sched.current
            for other in [p for p in sched.procs if p is not me and not p.done]:
                if signum:
                    sched.deliver(other, signum)
            if me is not None and signum:
                sched.deliver(me, signum)
            continue
        proc = sched.find(abs(pid))
        if proc is None:
            if pid == 1:
                sh.missing("kill of pid 1 from an exec")
            sh.err(f"sh: kill: can't kill pid {pid}: No such process\n")
            status = 1
            continue
        if signum:
            sched.deliver(proc, signum)
    return status


@applet("ps")
def ps(sh: Shell, argv: list[str]) -> int:
    users = _names(sh, "/etc/passwd")
    user = users.get(sh.m.uid, str(sh.m.uid))
    seen = list(sh.m.others())  # the namespace's other processes: pause, the pod's containers, the main one
    for proc in sh.sched.procs:
        if not proc.done:
            seen.append((proc.pid, sh.m.cmdline if proc.pid == sh.m.pid and sh.m.cmdline else proc.sh.arg0))
    lines = ["PID   USER     TIME  COMMAND"]
    lines.extend(f"{pid:5d} {user:<8} 0:00 {command}" for pid, command in sorted(seen))
    sh.out(enc("\n".join(lines) + "\n"))
    return 0


@gen_applet("top")
def top(sh: Shell, argv: list[str]) -> Job:
    yield FOREVER
    return 0


@gen_applet("yes")
def yes(sh: Shell, argv: list[str]) -> Job:
    line = enc((" ".join(argv[1:]) if len(argv) > 1 else "y") + "\n")
    chunk = line * max(1, 4096 // len(line))
    fd = sh.fds[1]
    if fd is None:
        return 1
    while True:
        yield from write(sh, chunk)
        if fd.pipe is None:
            yield Sleep(sh.m.now_ns() + NS // 1000)


@gen_applet("seq")
def seq(sh: Shell, argv: list[str]) -> Job:
    sep, width = "\n", False
    args: list[str] = []
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "-s" and i + 1 < len(argv):
            sep = argv[i + 1]
            i += 2
            continue
        if arg == "-w":
            width = True
        else:
            args.append(arg)
        i += 1
    if not 1 <= len(args) <= 3:
        sh.err("Usage: seq [-w] [-s SEP] [FIRST [INC]] LAST\n")
        return 1
    numbers: list[float] = []
    for arg in args:
        try:
            numbers.append(float(arg))
        except ValueError:
            sh.err(f"seq: invalid number '{arg}'\n")
            return 1
    first, step, last = (
        (1.0, 1.0, numbers[0])
        if len(numbers) == 1
        else ((numbers[0], 1.0, numbers[1]) if len(numbers) == 2 else (numbers[0], numbers[1], numbers[2]))
    )
    decimals = max((len(a.split(".")[1]) if "." in a else 0) for a in args)
    if step == 0:
        return 1
    pad = max(len(f"{first:.{decimals}f}"), len(f"{last:.{decimals}f}")) if width else 0
    batch: list[str] = []
    k = 0
    started = False
    while True:
        value = first + k * step
        if (step > 0 and value > last + 1e-9) or (step < 0 and value < last - 1e-9):
            break
        text = f"{value:.{decimals}f}"
        batch.append(text.zfill(pad) if pad else text)
        k += 1
        if len(batch) >= 1000:
            yield from write(sh, enc((sep if started else "") + sep.join(batch)))
            started = True
            batch = []
    if batch:
        yield from write(sh, enc((sep if started else "") + sep.join(batch)))
        started = True
    if started:
        yield from write(sh, b"\n")
    return 0


# -- paths and expressions --------------------------------------------------------------------------


@applet("basename")
def basename(sh: Shell, argv: list[str]) -> int:
    if len(argv) < 2:
        sh.err("Usage: basename FILE [SUFFIX]\n")
        return 1
    path = argv[1].rstrip("/") or "/"
    name = path.rsplit("/", 1)[-1] if path != "/" else "/"
    if len(argv) > 2 and name != argv[2] and name.endswith(argv[2]):
        name = name[: -len(argv[2])]
    sh.out(enc(name + "\n"))
    return 0


@applet("dirname")
def dirname(sh: Shell, argv: list[str]) -> int:
    if len(argv) < 2:
        sh.err("Usage: dirname FILENAME\n")
        return 1
    path = argv[1].rstrip("/")
    fallback = "/" if argv[1].startswith("/") else "."
    result = (path.rsplit("/", 1)[0].rstrip("/") or "/") if "/" in path else fallback
    sh.out(enc(result + "\n"))
    return 0


@applet("which")
def which(sh: Shell, argv: list[str]) -> int:
    status = 0
    for name in argv[1:]:
        found = None
        if "/" in name:
            found = name if sh._exec_target(name) is not None else None
        else:
            for directory in sh.vars.get("PATH", "").split(":"):
                if sh._exec_target(f"{directory or '.'}/{name}") is not None:
                    found = f"{directory or '.'}/{name}"
                    break
        if found is None:
            status = 1
        else:
            sh.out(enc(found + "\n"))
    return status


class _ExprError(Exception):
    pass


@applet("expr")
def expr(sh: Shell, argv: list[str]) -> int:
    tokens = argv[1:]
    if not tokens:
        sh.err("expr: missing operand\n")
        return 2
    parser = _ExprParser(tokens)
    try:
        value = parser.or_()
        if parser.i != len(tokens):
            raise _ExprError("syntax error")
    except _ExprError as exc:
        sh.err(f"expr: {exc}\n")
        return 2
    sh.out(enc(f"{value}\n"))
    return 1 if value in ("", "0") or value == 0 else 0


class _ExprParser:
    def __init__(self, tokens: list[str]) -> None:
        self.t = tokens
        self.i = 0

    def peek(self) -> str | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self) -> str:
        if self.i >= len(self.t):
            raise _ExprError("syntax error")
        self.i += 1
        return self.t[self.i - 1]

    def or_(self) -> Any:
        left = self.and_()
        while self.peek() == "|":
            self.i += 1
            right = self.and_()
            left = left if left not in ("", 0, "0") else (right if right not in ("", 0, "0") else 0)
        return left

    def and_(self) -> Any:
        left = self.cmp()
        while self.peek() == "&":
            self.i += 1
            right = self.cmp()
            left = left if left not in ("", 0, "0") and right not in ("", 0, "0") else 0
        return left

    def cmp(self) -> Any:
        left = self.add()
        while self.peek() in ("=", "!=", "<", "<=", ">", ">="):
            op = self.take()
            right = self.add()
            try:
                a: Any = int(left)
                b: Any = int(right)
            except (TypeError, ValueError):
                a, b = str(left), str(right)
            left = int({"=": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op])
        return left

    def add(self) -> Any:
        left = self.mul()
        while self.peek() in ("+", "-"):
            op = self.take()
            right = self.mul()
            left = self.num(left) + self.num(right) if op == "+" else self.num(left) - self.num(right)
        return left

    def mul(self) -> Any:
        left = self.match()
        while self.peek() in ("*", "/", "%"):
            op = self.take()
            a, b = self.num(left), self.num(self.match())
            if op != "*" and b == 0:
                raise _ExprError("division by zero")
            if op == "*":
                left = a * b
            else:
                q = abs(a) // abs(b) * (1 if (a >= 0) == (b >= 0) else -1)
                left = q if op == "/" else a - b * q
        return left

    def match(self) -> Any:
        left = self.primary()
        while self.peek() == ":":
            self.i += 1
            left = _expr_match(str(left), str(self.primary()))
        return left

    def primary(self) -> Any:
        tok = self.take()
        if tok == "(":
            value = self.or_()
            if self.take() != ")":
                raise _ExprError("syntax error")
            return value
        if tok == "length":
            return len(str(self.primary()))
        if tok == "substr":
            s, pos, n = str(self.primary()), self.num(self.primary()), self.num(self.primary())
            return s[pos - 1 : pos - 1 + n] if pos > 0 and n > 0 else ""
        if tok == "index":
            s, chars = str(self.primary()), str(self.primary())
            return next((i + 1 for i, c in enumerate(s) if c in chars), 0)
        if tok == "match":
            return _expr_match(str(self.primary()), str(self.primary()))
        return tok

    @staticmethod
    def num(value: Any) -> int:
        try:
            return int(value)
        except (TypeError, ValueError):
            raise _ExprError("non-numeric argument") from None


def _expr_match(text: str, pattern: str) -> Any:
    from kubeharness.emulators.cri.shell.applets_files import bre_to_python

    try:
        m = re.match(bre_to_python(pattern), text)
    except re.error:
        raise _ExprError("invalid regular expression") from None
    if m is None:
        return "" if re.compile(bre_to_python(pattern)).groups else 0
    return m.group(1) if m.re.groups else m.end()
