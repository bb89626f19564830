"""Applets over files and streams: cat, touch, rm, rmdir, mkdir, ls, cp, mv, chmod, head, tail, wc, grep.

Those that read standard input stream it (``cat``, ``grep``, ``head``), so they work at the end of a
pipeline whose producer runs forever; ``head`` closes its input when it has enough, which ends the
producer with SIGPIPE. ``tail -f`` prints the end of its files and then waits until it is killed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from kubeharness.emulators.cri.shell.appletbase import (
    Job,
    applet,
    dec,
    enc,
    gen_applet,
    open_input,
    parse_opts,
    read_all,
    write,
)
from kubeharness.emulators.cri.shell.io import FOREVER, Block, Fd, PipeRead
from kubeharness.emulators.cri.shell.vfs import Stat, VfsError

if TYPE_CHECKING:
    from kubeharness.emulators.cri.shell.interp import Shell


def _lines(fd: Fd) -> Generator[Block, Any, bytes | None]:
    """The next line (with its newline, or the unterminated rest at end of file); None at end of file."""
    while True:
        line = fd.readline()
        if line is None:
            yield PipeRead(fd.pipe)  # type: ignore[arg-type]
            continue
        return line or None


@gen_applet("cat")
def cat(sh: Shell, argv: list[str]) -> Job:
    parsed = parse_opts(sh, "cat", argv, "uvetAn")
    if parsed is None:
        return 1
    opts, files = parsed
    if "n" in opts or "v" in opts or "e" in opts or "t" in opts or "A" in opts:
        sh.missing("cat display options")
    status = 0
    for path in files or ["-"]:
        fd = open_input(sh, "cat", path)
        if fd is None:
            status = 1
            continue
        try:
            while True:
                chunk = fd.read(65536)
                if chunk is None:
                    yield PipeRead(fd.pipe)  # type: ignore[arg-type]
                    continue
                if not chunk:
                    break
                yield from write(sh, chunk)
        finally:
            fd.close()
    return status


@applet("touch")
def touch(sh: Shell, argv: list[str]) -> int:
    parsed = parse_opts(sh, "touch", argv, "cam", "dtr")
    if parsed is None:
        return 1
    opts, files = parsed
    if not files:
        sh.err("touch: missing operand\n")
        return 1
    status = 0
    for path in files:
        try:
            if "c" in opts and not sh.fs.exists(path, sh.cwd):
                continue
            sh.fs.touch(path, sh.cwd)
        except VfsError as exc:
            sh.err(f"touch: {path}: {exc}\n")
            status = 1
    return status


@applet("rm")
def rm(sh: Shell, argv: list[str]) -> int:
    parsed = parse_opts(sh, "rm", argv, "frRiv")
    if parsed is None:
        return 1
    opts, files = parsed
    force, recursive = "f" in opts, "r" in opts or "R" in opts
    if not files and not force:
        sh.err("rm: missing operand\n")
        return 1
    status = 0
    for path in files:
        try:
            info = sh.fs.stat(path, sh.cwd, follow=False)
            if info.kind == "dir" and not recursive:
                sh.err(f"rm: '{path}' is a directory\n")
                status = 1
                continue
            sh.fs.remove(path, recursive=recursive, cwd=sh.cwd)
        except VfsError as exc:
            if force and exc.message.startswith("No such"):
                continue
            sh.err(f"rm: can't remove '{path}': {exc}\n")
            status = 1
    return status


@applet("rmdir")
def rmdir(sh: Shell, argv: list[str]) -> int:
    parsed = parse_opts(sh, "rmdir", argv, "p")
    if parsed is None:
        return 1
    status = 0
    for path in parsed[1]:
        try:
            if not sh.fs.is_dir(path, sh.cwd):
                sh.fs.stat(path, sh.cwd)
                raise VfsError("Not a directory")
            sh.fs.remove(path, cwd=sh.cwd)
        except VfsError as exc:
            sh.err(f"rmdir: '{path}': {exc}\n")
            status = 1
    return status


@applet("mkdir")
def mkdir(sh: Shell, argv: list[str]) -> int:
    parsed = parse_opts(sh, "mkdir", argv, "pv", "m")
    if parsed is None:
        return 1
    opts, dirs = parsed
    if not dirs:
        sh.err("mkdir: missing operand\n")
        return 1
    mode = int(opts["m"], 8) if "m" in opts and opts["m"].isdigit() else 0o755
    status = 0
    for path in dirs:
        try:
            sh.fs.mkdir(path, parents="p" in opts, cwd=sh.cwd, mode=mode)
        except VfsError as exc:
            sh.err(f"mkdir: can't create directory '{path}': {exc}\n")
            status = 1
    return status


@applet("chmod")
def chmod(sh: Shell, argv: list[str]) -> int:
    args = [a for a in argv[1:] if a not in ("-R", "-v", "-f")]
    if len(args) < 2:
        sh.err("chmod: missing operand\n")
        return 1
    spec, files = args[0], args[1:]
    status = 0
    for path in files:
        try:
            mode = _apply_mode(spec, sh.fs.stat(path, sh.cwd).mode)
            if mode is None:
                sh.err(f"chmod: invalid mode '{spec}'\n")
                return 1
            sh.fs.chmod(path, mode, sh.cwd)
        except VfsError as exc:
            sh.err(f"chmod: {path}: {exc}\n")
            status = 1
    return status


def _apply_mode(spec: str, mode: int) -> int | None:
    if re.fullmatch(r"[0-7]{1,4}", spec):
        return int(spec, 8)
    for clause in spec.split(","):
        m = re.fullmatch(r"([ugoa]*)([-+=])([rwxX]*)", clause)
        if m is None:
            return None
        who = m.group(1) or "a"
        bits = 0
        for perm in m.group(3):
            value = {"r": 4, "w": 2, "x": 1, "X": 1}[perm]
            for w in who:
                for shift in {"u": [6], "g": [3], "o": [0], "a": [6, 3, 0]}[w]:
                    bits |= value << shift
        op = m.group(2)
        mode = mode | bits if op == "+" else (mode & ~bits if op == "-" else (mode & ~0o777) | bits)
    return mode


def _mode_string(info: Stat) -> str:
    kind = {"dir": "d", "link": "l", "dev": "c"}.get(info.kind, "-")
    out = []
    for shift in (6, 3, 0):
        bits = info.mode >> shift & 7
        out.append(("r" if bits & 4 else "-") + ("w" if bits & 2 else "-") + ("x" if bits & 1 else "-"))
    text = kind + "".join(out)
    if info.mode & 0o1000:
        text = text[:-1] + ("t" if info.mode & 1 else "T")
    return text


@applet("ls")
def ls(sh: Shell, argv: list[str]) -> int:
    parsed = parse_opts(sh, "ls", argv, "aAld1hFtrRCxe")
    if parsed is None:
        return 1
    opts, paths = parsed
    if "R" in opts:
        sh.missing("ls -R")
    status = 0
    files: list[tuple[str, Stat]] = []
    dirs: list[str] = []
    for path in paths or ["."]:
        try:
            info = sh.fs.stat(path, sh.cwd)
        except VfsError as exc:
            sh.err(f"ls: {path}: {exc}\n")
            status = 1
            continue
        if info.kind == "dir" and "d" not in opts:
            dirs.append(path)
        else:
            files.append((path, info))
    out: list[str] = [_ls_line(sh, name, info, opts) for name, info in _ls_sort(files, opts)]
    for index, path in enumerate(dirs):
        if len(dirs) + len(files) > 1:
            if out or index:
                out.append("")
            out.append(f"{path}:")
        entries: list[tuple[str, Stat]] = []
        names = sh.fs.listdir(path, sh.cwd)
        if "a" in opts:
            names = [".", "..", *names]
        for name in names:
            if name.startswith(".") and "a" not in opts and "A" not in opts:
                continue
            try:
                full = path.rstrip("/") + "/" + name if name not in (".", "..") else path + "/" + name
                entries.append((name, sh.fs.stat(full, sh.cwd, follow=False)))
            except VfsError:
                continue
        if "l" in opts:
            out.append(f"total {sum((i.size + 1023) // 1024 for _, i in entries)}")
        out.extend(_ls_line(sh, name, info, opts) for name, info in _ls_sort(entries, opts))
    if out:
        sh.out(enc("\n".join(out) + "\n"))
    return status


def _ls_sort(entries: list[tuple[str, Stat]], opts: dict[str, str]) -> list[tuple[str, Stat]]:
    if "t" in opts:
        ordered = sorted(entries, key=lambda e: (-e[1].mtime_ns, e[0]))
    else:
        ordered = sorted(entries, key=lambda e: e[0])
    return ordered[::-1] if "r" in opts else ordered


def _ls_line(sh: Shell, name: str, info: Stat, opts: dict[str, str]) -> str:
    suffix = ""
    if "F" in opts:
        suffix = "/" if info.kind == "dir" else ("*" if info.mode & 0o111 and info.kind == "file" else "")
    if "l" not in opts:
        return name + suffix
    owner = "root" if not info.host_path else _user(sh)
    size = _human(info.size) if "h" in opts else str(info.size)
    tm = time.gmtime(info.mtime_ns // 1_000_000_000)
    recent = abs(sh.m.now_ns() - info.mtime_ns) < 182 * 86400 * 1_000_000_000
    when = time.strftime("%b %e %H:%M" if recent else "%b %e  %Y", tm)
    links = 2 if info.kind == "dir" else 1
    return f"{_mode_string(info)} {links:4d} {owner:<8} {owner:<8} {size:>9} {when} {name}{suffix}"


def _user(sh: Shell) -> str:
    try:
        for line in dec(sh.fs.read("/etc/passwd")).splitlines():
            fields = line.split(":")
            if len(fields) > 2 and fields[2] == str(sh.m.uid):
                return fields[0]
    except VfsError:
        pass
    return str(sh.m.uid)


def _human(size: int) -> str:
    value = float(size)
    for unit in ("", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{value:.1f}{unit}" if unit and value < 10 else f"{value:.0f}{unit}"
        value /= 1024
    return str(size)


@applet("cp", "mv")
def cp(sh: Shell, argv: list[str]) -> int:
    name = argv[0]
    parsed = parse_opts(sh, name, argv, "rRapfnvuT")
    if parsed is None:
        return 1
    opts, args = parsed
    if len(args) < 2:
        sh.err(f"{name}: missing operand\n")
        return 1
    *sources, dest = args
    to_dir = sh.fs.is_dir(dest, sh.cwd)
    if len(sources) > 1 and not to_dir:
        sh.err(f"{name}: '{dest}' is not a directory\n")
        return 1
    status = 0
    for src in sources:
        target = dest.rstrip("/") + "/" + src.rstrip("/").rsplit("/", 1)[-1] if to_dir else dest
        try:
            info = sh.fs.stat(src, sh.cwd)
            if info.kind == "dir":
                if name == "cp" and not ({"r", "R", "a"} & set(opts)):
                    sh.err(f"cp: omitting directory '{src}'\n")
                    status = 1
                    continue
                _copy_tree(sh, src, target)
                if name == "mv":
                    sh.fs.remove(src, recursive=True, cwd=sh.cwd)
            elif name == "mv":
                sh.fs.rename(src, target, sh.cwd)
            else:
                sh.fs.write(target, sh.fs.read(src, sh.cwd), cwd=sh.cwd)
                sh.fs.chmod(target, info.mode, sh.cwd)
        except VfsError as exc:
            verb = "stat" if not sh.fs.exists(src, sh.cwd) else "create"
            sh.err(f"{name}: can't {verb} '{src if verb == 'stat' else target}': {exc}\n")
            status = 1
    return status


def _copy_tree(sh: Shell, src: str, dest: str) -> None:
    sh.fs.mkdir(dest, parents=True, cwd=sh.cwd)
    for name in sh.fs.listdir(src, sh.cwd):
        child_src, child_dest = f"{src}/{name}", f"{dest}/{name}"
        if sh.fs.is_dir(child_src, sh.cwd):
            _copy_tree(sh, child_src, child_dest)
        else:
            sh.fs.write(child_dest, sh.fs.read(child_src, sh.cwd), cwd=sh.cwd)


def _count_arg(sh: Shell, name: str, argv: list[str]) -> list[str]:
    """``head -5`` / ``tail -5`` / ``tail +5`` as ``-n 5`` / ``-n +5``."""
    out = [argv[0]]
    for i, arg in enumerate(argv[1:]):
        if re.fullmatch(r"-\d+", arg):
            out += ["-n", arg[1:]]
        elif re.fullmatch(r"\+\d+", arg) and name == "tail" and i == 0:
            out += ["-n", arg]
        else:
            out.append(arg)
    return out


@gen_applet("head")
def head(sh: Shell, argv: list[str]) -> Job:
    parsed = parse_opts(sh, "head", _count_arg(sh, "head", argv), "qv", "nc")
    if parsed is None:
        return 1
    opts, files = parsed
    try:
        lines = int(opts.get("n", "10"))
        count = int(opts["c"]) if "c" in opts else None
    except ValueError:
        sh.err(f"head: invalid number '{opts.get('n', opts.get('c'))}'\n")
        return 1
    status = 0
    for index, path in enumerate(files or ["-"]):
        fd = open_input(sh, "head", path)
        if fd is None:
            status = 1
            continue
        if len(files) > 1:
            yield from write(sh, enc(("\n" if index else "") + f"==> {path} <==\n"))
        try:
            if count is not None:
                got = b""
                while len(got) < count:
                    chunk = fd.read(count - len(got))
                    if chunk is None:
                        yield PipeRead(fd.pipe)  # type: ignore[arg-type]
                        continue
                    if not chunk:
                        break
                    got += chunk
                yield from write(sh, got)
                continue
            for _ in range(lines):
                line = yield from _lines(fd)
                if line is None:
                    break
                yield from write(sh, line)
        finally:
            fd.close()
    return status


@gen_applet("tail")
def tail(sh: Shell, argv: list[str]) -> Job:
    parsed = parse_opts(sh, "tail", _count_arg(sh, "tail", argv), "fFqv", "nc")
    if parsed is None:
        return 1
    opts, files = parsed
    spec = opts.get("n", "10")
    from_start = spec.startswith("+")
    try:
        lines = int(spec.lstrip("+"))
        count = int(opts["c"]) if "c" in opts else None
    except ValueError:
        sh.err(f"tail: invalid number '{spec}'\n")
        return 1
    status = 0
    for index, path in enumerate(files or ["-"]):
        fd = open_input(sh, "tail", path)
        if fd is None:
            status = 1
            continue
        data = yield from read_all(sh, fd)
        fd.close()
        if len(files) > 1:
            yield from write(sh, enc(("\n" if index else "") + f"==> {path} <==\n"))
        if count is not None:
            yield from write(sh, data[-count:] if count else b"")
            continue
        chunks = data.splitlines(keepends=True)
        selected = chunks[lines - 1 :] if from_start else (chunks[-lines:] if lines else [])
        yield from write(sh, b"".join(selected))
    if "f" in opts or "F" in opts:
        yield FOREVER  # following: new data is not replayed; it runs until killed
    return status


@gen_applet("wc")
def wc(sh: Shell, argv: list[str]) -> Job:
    parsed = parse_opts(sh, "wc", argv, "lwcmL")
    if parsed is None:
        return 1
    opts, files = parsed
    wanted = [k for k in "lwc" if k in opts or (k == "c" and "m" in opts)] or ["l", "w", "c"]
    status = 0
    rows: list[tuple[list[int], str]] = []
    totals = [0, 0, 0]
    for path in files or ["-"]:
        fd = open_input(sh, "wc", path)
        if fd is None:
            status = 1
            continue
        data = yield from read_all(sh, fd)
        fd.close()
        counts = [data.count(b"\n"), len(data.split()), len(data)]
        totals = [a + b for a, b in zip(totals, counts, strict=True)]
        rows.append((counts, "" if path == "-" and not files else path))
    if len(rows) > 1:
        rows.append((totals, "total"))
    index = {"l": 0, "w": 1, "c": 2}
    out: list[str] = []
    for counts, name in rows:
        values = [counts[index[k]] for k in wanted]
        text = str(values[0]) if len(values) == 1 else " ".join(f"{v:7d}" for v in values)
        out.append(f"{text} {name}" if name else text)
    yield from write(sh, enc("\n".join(out) + "\n"))
    return status


def bre_to_python(pattern: str) -> str:
    """A POSIX basic regular expression as a Python one."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            out.append(nxt if nxt in "(){}|+?" else "\\" + nxt)
            i += 2
        elif c in "(){}|+?":
            out.append("\\" + c)
            i += 1
        elif c == "*" and (not out or out[-1] in ("^", "(")):
            out.append("\\*")
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("]", "^") else i + 1)
            if end < 0:
                out.append("\\[")
                i += 1
            else:
                out.append(_bracket(pattern[i : end + 1]))
                i = end + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _bracket(text: str) -> str:
    for name, cls in (
        ("[:alpha:]", "a-zA-Z"),
        ("[:digit:]", "0-9"),
        ("[:alnum:]", "a-zA-Z0-9"),
        ("[:space:]", " \\t\\n\\r\\f\\v"),
        ("[:upper:]", "A-Z"),
        ("[:lower:]", "a-z"),
    ):
        text = text.replace(name, cls)
    return text


def _ere_to_python(pattern: str) -> str:
    return re.sub(r"\[(\^?\]?[^\]]*)\]", lambda m: _bracket(m.group(0)), pattern)


@gen_applet("grep", "egrep", "fgrep")
def grep(sh: Shell, argv: list[str]) -> Job:
    parsed = parse_opts(sh, argv[0], argv, "vcqiEFnlLhHswxo", "em")
    if parsed is None:
        return 2
    opts, args = parsed
    if argv[0] == "egrep":
        opts["E"] = ""
    if argv[0] == "fgrep":
        opts["F"] = ""
    if "e" in opts:
        pattern_text = opts["e"]
    elif args:
        pattern_text = args.pop(0)
    else:
        sh.err("Usage: grep [-vcqiEFnlLhHswxo] [-m N] PATTERN [FILE]...\n")
        return 2
    alternatives = pattern_text.split("\n")
    if "F" in opts:
        source = "|".join(re.escape(p) for p in alternatives)
    elif "E" in opts:
        source = "|".join(f"(?:{_ere_to_python(p)})" for p in alternatives)
    else:
        source = "|".join(f"(?:{bre_to_python(p)})" for p in alternatives)
    if "w" in opts:
        source = rf"(?<!\w)(?:{source})(?!\w)"
    if "x" in opts:
        source = rf"^(?:{source})$"
    try:
        regex = re.compile(source.encode("utf-8", "surrogateescape"), re.I if "i" in opts else 0)
    except re.error:
        sh.err(f"grep: bad regex '{pattern_text}'\n")
        return 2
    invert, quiet = "v" in opts, "q" in opts
    limit = int(opts["m"]) if "m" in opts and opts["m"].isdigit() else None
    files = args or ["-"]
    show_names = ("H" in opts or len(files) > 1) and "h" not in opts
    matched_any = False
    error = False
    for path in files:
        fd = (
            open_input(sh, "grep", path)
            if not ("s" in opts and path != "-" and not sh.fs.exists(path, sh.cwd))
            else None
        )
        if fd is None:
            error = True
            continue
        count = 0
        number = 0
        try:
            while limit is None or count < limit:
                line = yield from _lines(fd)
                if line is None:
                    break
                number += 1
                body = line[:-1] if line.endswith(b"\n") else line
                found = regex.search(body)
                if (found is None) != invert:
                    continue
                count += 1
                matched_any = True
                if quiet:
                    return 0
                if "l" in opts or "L" in opts or "c" in opts:
                    if "l" in opts:
                        break
                    continue
                prefix = (path.encode() + b":" if show_names else b"") + (f"{number}:".encode() if "n" in opts else b"")
                if "o" in opts and found is not None and not invert:
                    for m in regex.finditer(body):
                        yield from write(sh, prefix + m.group(0) + b"\n")
                else:
                    yield from write(sh, prefix + body + b"\n")
        finally:
            fd.close()
        if "c" in opts:
            yield from write(sh, (path.encode() + b":" if show_names else b"") + f"{count}\n".encode())
        elif ("l" in opts and count) or ("L" in opts and not count):
            yield from write(sh, path.encode() + b"\n")
    if error and not (quiet and matched_any):
        return 2
    return 0 if matched_any else 1
