"""The interpreter: runs a container's (or an exec's) command line as a generator of clock waits.

:func:`start` is the whole public surface the CRI emulator uses::

    program = start(argv, machine)      # a Generator[Wait, Signal | None, int]
    wait = next(program)                # Wait(until_ns): resume with send(None) once the clock is there
    wait = program.send(Signal("TERM")) # or deliver a signal; StopIteration.value is the exit code

A :class:`Shell` is the state of one shell process (variables, positional parameters, traps, open
file descriptors, working directory); it walks the AST of :mod:`.parser` with one generator method per
node type. Subshells (``( )``, ``$( )``, pipeline stages, ``cmd &``) are copies. Builtins and applets
live in :mod:`.builtins` and :mod:`.applets`; background jobs and pipeline stages are processes of
the scheduler (:mod:`.sched`), which also delivers signals.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from kubeharness.emulators.cri.shell import applets as applets_mod
from kubeharness.emulators.cri.shell import builtins as builtins_mod
from kubeharness.emulators.cri.shell.arith import Evaluator
from kubeharness.emulators.cri.shell.expand import ExpansionError, expand_pattern, expand_string, expand_words
from kubeharness.emulators.cri.shell.io import (
    PREEMPT,
    SIGNALS,
    Block,
    BrokenPipe,
    Capture,
    Fd,
    InBuf,
    JobWait,
    NullFd,
    OutFn,
    PipeWrite,
    Signal,
    Wait,
    ZeroFd,
    make_pipe,
)
from kubeharness.emulators.cri.shell.nodes import (
    AndOr,
    Case,
    For,
    FuncDef,
    Group,
    If,
    List,
    Loop,
    Node,
    Pipeline,
    Redir,
    Redirected,
    Script,
    Simple,
    Subshell,
)
from kubeharness.emulators.cri.shell.parser import parse
from kubeharness.emulators.cri.shell.patterns import match
from kubeharness.emulators.cri.shell.sched import STEP_BUDGET, Proc, Program, Scheduler
from kubeharness.emulators.cri.shell.vfs import Vfs, VfsError, normalize

Job = Generator[Block, Any, int]
SHELL_NAMES = frozenset({"sh", "ash", "bash"})
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SPECIAL_BUILTINS = frozenset(
    {
        ":",
        ".",
        "break",
        "continue",
        "eval",
        "exec",
        "exit",
        "export",
        "readonly",
        "return",
        "set",
        "shift",
        "source",
        "trap",
        "unset",
        "local",
    }
)

__all__ = ["APPLET_NAMES", "Machine", "Program", "Shell", "Signal", "Wait", "start"]


def _ignore(_: str) -> None:
    pass


@dataclass
class Machine:
    """What the commands of one container (or one exec) see."""

    fs: Vfs
    env: dict[str, str]  # from the CRI config (PATH etc.)
    cwd: str  # working_dir, default "/"
    uid: int
    gid: int
    groups: list[int]
    hostname: str
    pid: int  # 1 for the container's main process; an exec gets another number
    now_ns: Callable[[], int]  # the clock (ns since epoch)
    stdout: Callable[[bytes], None]  # where fd 1 goes (container log writer, or an exec's capture buffer)
    stderr: Callable[[bytes], None]
    stdin: bytes = b""
    missing: Callable[[str], None] = field(default=_ignore)  # called whenever something is not supported
    # What ``ps`` shows for this machine's main process, kept current by the shell (``exec`` changes it).
    cmdline: str = ""
    # The other processes of this PID namespace, (pid, command line): the pause process and the pod's
    # other containers when it is shared, the container's main process for an exec.
    others: Callable[[], list[tuple[int, str]]] = field(default=lambda: [])


class ExitShell(Exception):
    """``exit`` (or a fatal error): leave the current shell process with ``status``."""

    def __init__(self, status: int, run_exit_trap: bool = True) -> None:
        super().__init__(status)
        self.status = status
        self.run_exit_trap = run_exit_trap


class LoopControl(Exception):
    """``break N`` / ``continue N``."""

    def __init__(self, is_break: bool, levels: int) -> None:
        super().__init__(levels)
        self.is_break = is_break
        self.levels = levels


class ReturnFromFunction(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class RedirError(Exception):
    """A redirection that failed; ``str()`` is the message after ``sh: ``."""


class Shell:
    """The state of one shell process and the methods that run AST nodes in it."""

    def __init__(self, m: Machine, sched: Scheduler, pid: int) -> None:
        self.m = m
        self.fs = m.fs
        self.sched = sched
        self.pid = pid  # $$
        self.proc: Proc | None = None
        self.vars: dict[str, str] = {}
        self.exported: set[str] = set()
        self.readonly: set[str] = set()
        self.args: list[str] = []
        self.arg0 = "sh"
        self.exec_last: Simple | None = None  # with sh -c: the command to run as an exec of this process
        self.status = 0
        self.sub_status: int | None = None
        self.last_bg: int | None = None
        self.cwd = "/"
        self.fds: list[Fd | None] = [None] * 10
        self.traps: dict[int, str] = {}
        self.pending: list[int] = []
        self.funcs: dict[str, Node] = {}
        self.locals: list[dict[str, str | None]] = []
        self.jobs: list[Proc] = []
        self.errexit = False
        self.xtrace = False
        self.noglob = False
        self.nounset = False
        self.pipefail = False
        self.cond_depth = 0
        self.loop_depth = 0
        self.arith = Evaluator(self.vars.get, self.setvar)

    # -- creation -----------------------------------------------------------------------------------

    @classmethod
    def initial(cls, m: Machine, sched: Scheduler) -> Shell:
        sh = cls(m, sched, m.pid)
        sh.vars.update(m.env)
        sh.exported.update(m.env)
        sh.vars.setdefault("PATH", DEFAULT_PATH)
        sh.vars.setdefault("HOME", "/root" if m.uid == 0 else "/")
        sh.vars.setdefault("IFS", " \t\n")
        sh.vars.setdefault("PS1", "# " if m.uid == 0 else "$ ")
        sh.vars["PPID"] = "0"
        sh.cwd = normalize(m.cwd or "/")
        sh.vars["PWD"] = sh.cwd
        sh.fds[0] = InBuf(m.stdin)
        sh.fds[1] = OutFn(m.stdout)
        sh.fds[2] = OutFn(m.stderr)
        return sh

    def _copy_into(self, child: Shell) -> None:
        child.vars = dict(self.vars)
        child.arith = Evaluator(child.vars.get, child.setvar)
        child.exported = set(self.exported)
        child.readonly = set(self.readonly)
        child.cwd = self.cwd
        child.fds = [fd.dup() if fd is not None else None for fd in self.fds]
        child.errexit, child.xtrace, child.noglob = self.errexit, self.xtrace, self.noglob
        child.nounset, child.pipefail = self.nounset, self.pipefail
        # Caught signals go back to their default in a new process; ignored ones stay ignored.
        child.traps = {sig: "" for sig, action in self.traps.items() if action == "" and sig != 0}

    def fork(self) -> Shell:
        """A subshell: a copy of this shell (variables, functions, fds, cwd); traps reset."""
        child = Shell(self.m, self.sched, self.pid)
        self._copy_into(child)
        child.args = list(self.args)
        child.arg0 = self.arg0
        child.funcs = dict(self.funcs)
        child.status = self.status
        child.last_bg = self.last_bg
        child.proc = self.proc
        child.exec_last = None
        return child

    def new_process(self) -> Shell:
        """A new shell program started from this one (``sh -c``): only the exported environment."""
        child = Shell(self.m, self.sched, self.sched.alloc_pid())
        self._copy_into(child)
        child.vars = {k: v for k, v in self.vars.items() if k in self.exported or k in ("IFS", "PWD", "PPID")}
        child.arith = Evaluator(child.vars.get, child.setvar)
        child.vars["PPID"] = str(self.pid)
        child.proc = self.proc
        return child

    def replace_fd(self, num: int, fd: Fd) -> None:
        old = self.fds[num]
        if old is not None:
            old.close()
        self.fds[num] = fd

    def close_fds(self) -> None:
        for i, fd in enumerate(self.fds):
            if fd is not None:
                fd.close()
                self.fds[i] = None

    # -- variables ----------------------------------------------------------------------------------

    def setvar(self, name: str, value: str) -> None:
        if name in self.readonly:
            self.err(f"sh: {name}: is read only\n")
            raise ExitShell(2)
        self.vars[name] = value
        if name == "PATH":
            self.sched.cmd_cache.clear()

    def unsetvar(self, name: str) -> None:
        if name in self.readonly:
            self.err(f"sh: {name}: is read only\n")
            raise ExitShell(2)
        self.vars.pop(name, None)
        self.exported.discard(name)

    def param(self, name: str) -> str | None:
        value = self.vars.get(name)
        if value is not None:
            return value
        if name.isdigit():
            index = int(name)
            if index == 0:
                return self.arg0
            return self.args[index - 1] if index <= len(self.args) else None
        if name == "?":
            return str(self.status)
        if name == "$":
            return str(self.pid)
        if name == "#":
            return str(len(self.args))
        if name == "!":
            return str(self.last_bg) if self.last_bg is not None else None
        if name in ("@", "*"):
            return " ".join(self.args) if self.args else None
        if name == "-":
            return "".join(
                f for f, on in (("e", self.errexit), ("f", self.noglob), ("u", self.nounset), ("x", self.xtrace)) if on
            )
        return None

    def environ(self) -> dict[str, str]:
        return {k: v for k, v in self.vars.items() if k in self.exported}

    # -- output helpers -----------------------------------------------------------------------------

    def out(self, data: bytes) -> None:
        fd = self.fds[1]
        if fd is not None:
            fd.write(data)

    def err(self, text: str) -> None:
        fd = self.fds[2]
        if fd is not None:
            with contextlib.suppress(BrokenPipe):
                fd.write(text.encode("utf-8", "surrogateescape"))

    def missing(self, what: str) -> None:
        self.m.missing(what)

    # -- running scripts ----------------------------------------------------------------------------

    def run_script(self, script: Script) -> Job:
        status = 0
        if script.body.items:
            status = yield from self.run_list(script.body)
        if script.error:
            self.err(f"sh: {script.error}\n")
            if script.error.endswith("bad substitution"):
                self.missing(f"parameter expansion form ({script.error})")
            raise ExitShell(2)
        return status

    def run_text(self, text: str) -> Job:
        return (yield from self.run_script(parse(text)))

    def as_process(self, body: Job) -> Job:
        """Run ``body`` as the whole life of this shell: exit status, EXIT trap, closing its fds."""
        try:
            try:
                status = yield from body
            except ExitShell as exc:
                status = exc.status
                if not exc.run_exit_trap:
                    return status
            except ExpansionError as exc:
                self.err(f"sh: {exc}\n")
                status = 2
            except (LoopControl, ReturnFromFunction):
                status = self.status
            return (yield from self.exit_trap(status))
        finally:
            self.close_fds()

    def exit_trap(self, status: int) -> Job:
        action = self.traps.pop(0, None)
        if not action:
            return status
        self.status = status
        try:
            yield from self.run_text(action)
        except ExitShell as exc:
            return exc.status
        except ExpansionError as exc:
            self.err(f"sh: {exc}\n")
            return 2
        return status

    def run_traps(self) -> Job:
        while self.pending:
            signum = self.pending.pop(0)
            action = self.traps.get(signum)
            if not action:
                continue
            saved = self.status
            yield from self.run_text(action)
            self.status = saved
        return self.status

    # -- nodes --------------------------------------------------------------------------------------

    def run_node(self, node: Node) -> Job:
        kind = type(node)
        if kind is Simple:
            return (yield from self.run_simple(node))  # type: ignore[arg-type]
        runner = _RUNNERS.get(kind)
        if runner is None:
            self.missing(f"construct {kind.__name__}")
            self.err(f"sh: {kind.__name__}: not supported\n")
            raise ExitShell(2)
        return (yield from runner(self, node))

    def run_list(self, node: List) -> Job:
        status = self.status
        for cmd, background in node.items:
            if background:
                status = self.start_background(cmd)
                continue
            status = yield from self.run_node(cmd)
            if status and self.errexit and not self.cond_depth and type(cmd) is not AndOr and not _negated(cmd):
                raise ExitShell(status)
        return status

    def start_background(self, cmd: Node) -> int:
        child = self.fork()
        if child.fds[0] is not None and isinstance(self.fds[0], InBuf) and self.fds[0] is _root_stdin(self):
            child.replace_fd(0, NullFd())
        pid = self.sched.alloc_pid()
        proc = self.sched.spawn(pid, child, child.as_process(child.run_node(cmd)))
        child.proc = proc
        self.jobs.append(proc)
        self.last_bg = pid
        self.status = 0
        return 0

    def run_andor(self, node: AndOr) -> Job:
        self.cond_depth += 1
        try:
            status = yield from self.run_node(node.first)
            last = len(node.rest) - 1
            for i, (is_and, cmd) in enumerate(node.rest):
                if (status == 0) != is_and:
                    continue
                if i == last:
                    self.cond_depth -= 1
                    try:
                        status = yield from self.run_node(cmd)
                    finally:
                        self.cond_depth += 1
                else:
                    status = yield from self.run_node(cmd)
        finally:
            self.cond_depth -= 1
        self.status = status
        return status

    def run_pipeline(self, node: Pipeline) -> Job:
        if len(node.cmds) == 1:
            if node.negate:
                self.cond_depth += 1
                try:
                    status = yield from self.run_node(node.cmds[0])
                finally:
                    self.cond_depth -= 1
            else:
                status = yield from self.run_node(node.cmds[0])
        else:
            procs: list[Proc] = []
            last = len(node.cmds) - 1
            reader: Fd | None = None
            for i, cmd in enumerate(node.cmds):
                child = self.fork()
                if reader is not None:
                    child.replace_fd(0, reader)
                if i < last:
                    reader, writer = make_pipe()
                    child.replace_fd(1, writer)
                proc = self.sched.spawn(self.sched.alloc_pid(), child, child.as_process(child.run_node(cmd)))
                child.proc = proc
                procs.append(proc)
            yield JobWait(procs, False)
            status = procs[-1].status
            if self.pipefail:
                status = next((p.status for p in reversed(procs) if p.status), 0)
        if node.negate:
            status = int(status == 0)
        self.status = status
        if self.pending:
            yield from self.run_traps()
        return status

    def run_simple(self, node: Simple) -> Job:
        sched = self.sched
        sched.budget -= 1
        if sched.budget <= 0:
            sched.budget = STEP_BUDGET
            yield PREEMPT
        argv = node.static_argv
        if argv is None:
            self.sub_status = None
            argv = yield from expand_words(self, node.words)
        if not argv:
            return (yield from self._assign_only(node))
        if self.xtrace:
            self.err("+ " + " ".join(argv) + "\n")
        name = argv[0]
        saved_vars: dict[str, tuple[str | None, bool]] | None = None
        if node.assigns:
            saved_vars = yield from self._prefix_assign(node, name in SPECIAL_BUILTINS)
        saved_fds: list[tuple[int, Fd | None]] | None = None
        if node.redirs:
            try:
                saved_fds = yield from self.apply_redirs(node.redirs)
            except RedirError as exc:
                self.err(f"sh: {exc}\n")
                self._restore_vars(saved_vars)
                self.status = 1
                return 1
        try:
            func = self.funcs.get(name) if self.funcs else None
            if func is not None and name not in SPECIAL_BUILTINS:
                status = yield from self.call_function(func, argv)
            else:
                sync = builtins_mod.SYNC.get(name)
                if sync is not None:
                    status = sync(self, argv)
                else:
                    gen = builtins_mod.GEN.get(name)
                    if gen is not None:
                        status = yield from gen(self, argv)
                    else:
                        if node is self.exec_last and not any(self.traps.values()):
                            # busybox sh -c execs its last simple command: the process becomes it
                            self.show_as(argv)
                        status = yield from self.run_external(argv)
        finally:
            if saved_fds is not None:
                if name == "exec" and len(argv) == 1:
                    for _, old in saved_fds:
                        if old is not None:
                            old.close()
                else:
                    self.restore_fds(saved_fds)
            if saved_vars is not None:
                self._restore_vars(saved_vars)
        self.status = status
        if self.pending:
            yield from self.run_traps()
        out = self.fds[1]
        if out is not None and out.full():
            yield PipeWrite(out.pipe)  # type: ignore[arg-type]
        return status

    def _assign_only(self, node: Simple) -> Job:
        self.sub_status = None
        for name, word in node.assigns:
            value = yield from expand_string(self, word)
            self.setvar(name, value)
            if self.xtrace:
                self.err(f"+ {name}={value}\n")
        status = self.sub_status or 0
        if node.redirs:
            try:
                saved = yield from self.apply_redirs(node.redirs)
                self.restore_fds(saved)
            except RedirError as exc:
                self.err(f"sh: {exc}\n")
                status = 1
        self.status = status
        if self.pending:
            yield from self.run_traps()
        return status

    def _prefix_assign(
        self, node: Simple, permanent: bool
    ) -> Generator[Block, Any, dict[str, tuple[str | None, bool]] | None]:
        saved: dict[str, tuple[str | None, bool]] = {}
        for name, word in node.assigns:
            value = yield from expand_string(self, word)
            if not permanent and name not in saved:
                saved[name] = (self.vars.get(name), name in self.exported)
                self.exported.add(name)
            self.setvar(name, value)
        return None if permanent else saved

    def _restore_vars(self, saved: dict[str, tuple[str | None, bool]] | None) -> None:
        if not saved:
            return
        for name, (value, exported) in saved.items():
            if value is None:
                self.vars.pop(name, None)
            else:
                self.vars[name] = value
            if not exported:
                self.exported.discard(name)
        if "PATH" in saved:
            self.sched.cmd_cache.clear()

    def call_function(self, body: Node, argv: list[str]) -> Job:
        saved_args = self.args
        self.args = argv[1:]
        self.locals.append({})
        try:
            status = yield from self.run_node(body)
        except ReturnFromFunction as ret:
            status = ret.status
        finally:
            self.args = saved_args
            for name, value in self.locals.pop().items():
                if value is None:
                    self.vars.pop(name, None)
                else:
                    self.vars[name] = value
        return status

    def run_group(self, node: Group) -> Job:
        return (yield from self.run_list(node.body))

    def run_subshell(self, node: Subshell) -> Job:
        child = self.fork()
        status = yield from child.as_process(child.run_list(node.body))
        self.status = status
        return status

    def command_substitution(self, script: Script) -> Generator[Block, Any, str]:
        child = self.fork()
        capture = Capture()
        child.replace_fd(1, capture)
        status = yield from child.as_process(child.run_script(script))
        self.sub_status = status
        self.status = status
        return capture.data.decode("utf-8", "surrogateescape").rstrip("\n")

    def run_if(self, node: If) -> Job:
        for cond, body in node.clauses:
            self.cond_depth += 1
            try:
                status = yield from self.run_list(cond)
            finally:
                self.cond_depth -= 1
            if status == 0:
                return (yield from self.run_list(body))
        if node.else_ is not None:
            return (yield from self.run_list(node.else_))
        self.status = 0
        return 0

    def run_loop(self, node: Loop) -> Job:
        status = 0
        self.loop_depth += 1
        try:
            while True:
                self.cond_depth += 1
                try:
                    cond = yield from self.run_list(node.cond)
                finally:
                    self.cond_depth -= 1
                if (cond == 0) == node.until:
                    break
                try:
                    status = yield from self.run_list(node.body)
                except LoopControl as ctl:
                    if ctl.levels > 1:
                        ctl.levels -= 1
                        raise
                    if ctl.is_break:
                        status = 0
                        break
        finally:
            self.loop_depth -= 1
        self.status = status
        return status

    def run_for(self, node: For) -> Job:
        if node.words is None:
            values = list(self.args)
        else:
            values = yield from expand_words(self, node.words)
        status = 0
        self.loop_depth += 1
        try:
            for value in values:
                self.setvar(node.var, value)
                try:
                    status = yield from self.run_list(node.body)
                except LoopControl as ctl:
                    if ctl.levels > 1:
                        ctl.levels -= 1
                        raise
                    if ctl.is_break:
                        status = 0
                        break
        finally:
            self.loop_depth -= 1
        self.status = status
        return status

    def run_case(self, node: Case) -> Job:
        subject = yield from expand_string(self, node.word)
        for pats, body in node.arms:
            for pat in pats:
                pattern = yield from expand_pattern(self, pat)
                if match(pattern, subject):
                    if not body.items:
                        self.status = 0
                        return 0
                    return (yield from self.run_list(body))
        self.status = 0
        return 0

    def run_funcdef(self, node: FuncDef) -> Job:
        self.funcs[node.name] = node.body
        self.status = 0
        return 0
        yield  # a generator like every runner

    def run_redirected(self, node: Redirected) -> Job:
        try:
            saved = yield from self.apply_redirs(node.redirs)
        except RedirError as exc:
            self.err(f"sh: {exc}\n")
            self.status = 1
            return 1
        try:
            return (yield from self.run_node(node.cmd))
        finally:
            self.restore_fds(saved)

    # -- redirections -------------------------------------------------------------------------------

    def apply_redirs(self, redirs: list[Redir]) -> Generator[Block, Any, list[tuple[int, Fd | None]]]:
        saved: list[tuple[int, Fd | None]] = []
        try:
            for r in redirs:
                new = yield from self._open_redir(r)
                saved.append((r.fd, self.fds[r.fd] if r.fd < 10 else None))
                if r.fd < 10:
                    self.fds[r.fd] = new
        except BaseException:
            self.restore_fds(saved)
            raise
        return saved

    def restore_fds(self, saved: list[tuple[int, Fd | None]]) -> None:
        for num, old in reversed(saved):
            cur = self.fds[num]
            if cur is not None:
                cur.close()
            self.fds[num] = old

    def _open_redir(self, r: Redir) -> Generator[Block, Any, Fd | None]:
        op = r.op
        if op == "<<":
            text = yield from expand_string(self, r.target)
            return InBuf(text.encode("utf-8", "surrogateescape"))
        target = yield from expand_string(self, r.target)
        if op in (">&", "<&"):
            if target == "-":
                return None
            if target.isdigit():
                src = self.fds[int(target)] if int(target) < 10 else None
                if src is None:
                    raise RedirError(f"{target}: Bad file descriptor")
                return src.dup()
            if op == "<&":
                raise RedirError(f"{target}: Bad file descriptor")
            op = ">"
        if op in (">", ">|", ">>"):
            return self.open_write(target, op == ">>")
        return self.open_read(target)

    def open_write(self, path: str, append: bool) -> Fd:
        try:
            info = self.fs.stat(path, self.cwd)
        except VfsError:
            info = None
        if info is not None and info.kind == "dev":
            if info.device in ("stdout", "stderr"):
                fd = self.fds[1 if info.device == "stdout" else 2]
                return fd.dup() if fd is not None else NullFd()
            return NullFd()
        try:
            self.fs.write(path, b"", append=True, cwd=self.cwd) if append else self.fs.write(path, b"", cwd=self.cwd)
            vpath = self.fs.resolve(path, self.cwd)
        except VfsError as exc:
            reason = "nonexistent directory" if exc.message.startswith("No such") else exc.message
            raise RedirError(f"can't create {path}: {reason}") from None
        fs = self.fs

        def append_to_file(data: bytes) -> None:
            try:
                fs.write(vpath, data, append=True)
            except VfsError as exc:
                raise BrokenPipe from exc

        from kubeharness.emulators.cri.shell.io import FileOut

        return FileOut(append_to_file)

    def open_read(self, path: str) -> Fd:
        try:
            info = self.fs.stat(path, self.cwd)
            if info.kind == "dev":
                return self.open_device(info.device)
            return InBuf(self.fs.read(path, self.cwd))
        except VfsError as exc:
            reason = "no such file" if exc.message.startswith("No such") else exc.message
            raise RedirError(f"can't open '{path}': {reason}") from None

    def open_device(self, device: str) -> Fd:
        if device in ("stdin", "stdout", "stderr"):
            fd = self.fds[("stdin", "stdout", "stderr").index(device)]
            return fd.dup() if fd is not None else NullFd()
        if device == "zero":
            return ZeroFd()
        if device in ("random", "urandom"):
            return ZeroFd(b"\x5a")
        return NullFd()

    # -- programs -----------------------------------------------------------------------------------

    def lookup(self, name: str) -> tuple[str, str] | None:
        """Where a command comes from: ("applet", name), ("script", path), ("denied", path) or None."""
        if "/" in name:
            return self._exec_target(name)
        key = (self.vars.get("PATH", DEFAULT_PATH), name)
        cache = self.sched.cmd_cache
        if key in cache:
            found: tuple[str, str] | None = cache[key]
            return found
        found = None
        for directory in key[0].split(":"):
            target = self._exec_target((directory or ".") + "/" + name)
            if target is not None:
                found = target
                break
        cache[key] = found
        return found

    def _exec_target(self, path: str) -> tuple[str, str] | None:
        try:
            info = self.fs.stat(path, self.cwd)
        except VfsError:
            return None
        if info.kind != "file":
            return None
        if info.applet:
            return ("applet", info.applet)
        if not info.mode & 0o111:
            return ("denied", path)
        return ("script", normalize(path, self.cwd))

    def show_as(self, argv: list[str]) -> None:
        """This process now runs ``argv`` (an exec): what ``ps`` shows for it."""
        if self.proc is not None and self.proc.pid == self.m.pid:
            self.m.cmdline = " ".join(argv)

    def run_external(self, argv: list[str], as_image: bool = False) -> Job:
        """Run a program found on PATH (or by path); ``as_image``: it replaces this shell (``exec``)."""
        if as_image:
            self.show_as(argv)
        name = argv[0]
        target = self.lookup(name)
        if target is None:
            self.err(f"sh: {name}: not found\n")
            self.missing(f"command {name}")
            return 127
        kind, value = target
        if kind == "denied":
            self.err(f"sh: {name}: Permission denied\n")
            return 126
        if kind == "script":
            try:
                text = self.fs.read(value, self.cwd)
            except VfsError as exc:
                self.err(f"sh: {name}: {exc}\n")
                return 126
            if text.startswith(b"\x7fELF"):
                self.err(f"sh: {name}: not found\n")
                self.missing(f"binary program {value}")
                return 127
            argv = ["sh", value, *argv[1:]]
            value = "sh"
        if value in SHELL_NAMES:
            return (yield from self.run_shell(argv, as_image))
        entry = applets_mod.APPLETS.get(value)
        if entry is None:
            self.err(f"sh: {name}: not found\n")
            self.missing(f"applet {value}")
            return 127
        fn, is_gen = entry
        try:
            if is_gen:
                return int((yield from fn(self, argv)))
            return int(fn(self, argv))
        except BrokenPipe:
            return 128 + SIGNALS["PIPE"]

    def run_shell(self, argv: list[str], as_image: bool) -> Job:
        if as_image:
            # This process becomes a fresh shell: same pid, exported environment, ignored signals kept.
            self.vars = {k: v for k, v in self.vars.items() if k in self.exported or k in ("IFS", "PWD", "PPID")}
            self.arith = Evaluator(self.vars.get, self.setvar)
            self.funcs = {}
            self.traps = {sig: "" for sig, action in self.traps.items() if action == "" and sig != 0}
            return (yield from self.shell_main(argv))
        child = self.new_process()
        return (yield from child.as_process(child.shell_main(argv)))

    def shell_main(self, argv: list[str]) -> Job:
        """``sh [-eux] [-c SCRIPT [NAME [ARGS...]] | FILE [ARGS...] | -s [ARGS...]]``."""
        i = 1
        command: str | None = None
        read_stdin = False
        want_command = False
        while i < len(argv) and len(argv[i]) > 1 and argv[i][0] in "-+" and not (want_command and command is None):
            arg = argv[i]
            i += 1
            if arg == "--":
                break
            if arg in ("-o", "+o"):
                if i < len(argv):
                    builtins_mod.set_option(self, argv[i], arg[0] == "-")
                    i += 1
                continue
            for flag in arg[1:]:
                if flag == "c":
                    want_command = True
                elif flag == "s":
                    read_stdin = True
                elif flag in "eufx":
                    builtins_mod.set_option(self, flag, arg[0] == "-")
                elif flag not in "il":
                    self.err(f"sh: -{flag}: invalid option\n")
                    self.missing(f"sh option -{flag}")
                    return 2
        if want_command:
            if i >= len(argv):
                self.err("sh: -c requires an argument\n")
                return 2
            command = argv[i]
            i += 1
            if i < len(argv):
                self.arg0 = argv[i]
                i += 1
            self.args = argv[i:]
            script = parse(command)
            self.exec_last = _last_simple(script)
            return (yield from self.run_script(script))
        if i < len(argv) and not read_stdin:
            path = argv[i]
            self.arg0 = path
            self.args = argv[i + 1 :]
            try:
                text = self.fs.read(path, self.cwd)
            except VfsError as exc:
                self.err(f"sh: can't open '{path}': {exc}\n")
                return 2
            return (yield from self.run_text(text.decode("utf-8", "surrogateescape")))
        self.args = argv[i:]
        data = yield from applets_mod.read_all(self, 0)
        return (yield from self.run_text(data.decode("utf-8", "surrogateescape")))


def _negated(cmd: Node) -> bool:
    return isinstance(cmd, Pipeline) and cmd.negate


def _root_stdin(sh: Shell) -> Fd | None:
    proc = sh.proc
    return proc.sh.fds[0] if proc is not None else None


_RUNNERS: dict[type, Callable[[Shell, Any], Job]] = {
    List: Shell.run_list,
    AndOr: Shell.run_andor,
    Pipeline: Shell.run_pipeline,
    Group: Shell.run_group,
    Subshell: Shell.run_subshell,
    If: Shell.run_if,
    Loop: Shell.run_loop,
    For: Shell.run_for,
    Case: Shell.run_case,
    FuncDef: Shell.run_funcdef,
    Redirected: Shell.run_redirected,
}

APPLET_NAMES: tuple[str, ...] = tuple(sorted({*applets_mod.APPLETS, *SHELL_NAMES}))


def _last_simple(script: Script) -> Simple | None:
    """The command ``sh -c`` would exec in place of itself: the script's last, foreground, simple command."""
    if script.error or not script.body.items:
        return None
    node, background = script.body.items[-1]
    return node if type(node) is Simple and not background else None


def start(argv: list[str], machine: Machine) -> Program:
    """The program that runs ``argv`` (entrypoint and cmd combined) on ``machine``."""

    def report(message: str) -> None:
        machine.stderr(f"sh: {message}\n".encode())
        machine.missing(message)

    sched = Scheduler(machine.now_ns, report, machine.pid)
    sh = Shell.initial(machine, sched)
    proc = sched.spawn(machine.pid, sh, _main(sh, argv))
    sh.proc = proc
    return sched.run(proc)


def _main(sh: Shell, argv: list[str]) -> Job:
    if not argv:
        sh.err("sh: empty command line\n")
        sh.missing("empty command line")
        return 127
    return (yield from sh.as_process(sh.run_external(argv, as_image=True)))
