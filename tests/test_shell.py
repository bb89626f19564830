"""The busybox shell subset: constructs, applets, errors, signals and traps, pipelines and jobs on a clock.

Programs are driven by hand: a fake "now" that jumps to each Wait's deadline, signals injected at
given times, output recorded with the time it was written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kubeharness.emulators.cri.shell.bench import run as bench_run
from kubeharness.emulators.cri.shell.interp import APPLET_NAMES, Machine, Signal, Wait, start
from kubeharness.emulators.cri.shell.layout import busybox_layout
from kubeharness.emulators.cri.shell.parser import parse
from kubeharness.emulators.cri.shell.vfs import Mount, Vfs

S = 1_000_000_000
T0 = 1_767_225_600 * S  # 2026-01-01T00:00:00Z
LAYOUT = busybox_layout(APPLET_NAMES)


@dataclass
class Result:
    status: int | None  # None: still running at the end of the run
    out: str
    err: str
    missing: list[str]
    events: list[tuple[float, str, bytes]] = field(default_factory=list)  # (seconds since start, stream, data)
    waits: list[Wait] = field(default_factory=list)


@dataclass
class Box:
    """One container: its filesystem and machine, programs run on it one after another."""

    tmp: Path
    now: int = T0
    pid: int = 1
    uid: int = 0
    gid: int = 0
    groups: list[int] = field(default_factory=lambda: [0])
    env: dict[str, str] = field(default_factory=lambda: {"PATH": "/usr/bin:/bin", "HOME": "/root"})
    mounts: list[Mount] = field(default_factory=list)
    stdin: bytes = b""
    cwd: str = "/"
    fs: Vfs | None = None

    def __post_init__(self) -> None:
        self.fs = Vfs(LAYOUT, self.tmp / "upper", self.mounts, now_ns=lambda: self.now)
        self.fs.add_file("/etc/hostname", b"web-0\n")
        self.fs.add_file("/etc/resolv.conf", b"nameserver 10.96.0.10\nsearch default.svc.cluster.local\n")

    def run(
        self,
        argv: list[str] | str,
        seconds: float = 100,
        signals: tuple[tuple[float, str], ...] = (),
        max_waits: int = 100_000,
    ) -> Result:
        if isinstance(argv, str):
            argv = ["sh", "-c", argv]
        start_ns = self.now
        events: list[tuple[float, str, bytes]] = []
        missing: list[str] = []
        assert self.fs is not None

        def writer(stream: str) -> Callable[[bytes], None]:
            return lambda data: events.append(((self.now - start_ns) / S, stream, data))

        machine = Machine(
            self.fs, dict(self.env), self.cwd, self.uid, self.gid, list(self.groups), "web-0", self.pid,
            lambda: self.now, writer("stdout"), writer("stderr"), self.stdin, missing.append,
        )
        program = start(argv, machine)
        limit = start_ns + int(seconds * S)
        pending = sorted((start_ns + int(t * S), name) for t, name in signals)
        waits: list[Wait] = []
        status: int | None = None
        try:
            wait = next(program)
            while len(waits) < max_waits:
                waits.append(wait)
                due = wait.until_ns
                if pending and pending[0][0] <= limit and (due is None or pending[0][0] <= due):
                    at, name = pending.pop(0)
                    self.now = max(self.now, at)
                    wait = program.send(Signal(name))
                    continue
                if due is None or due > limit:
                    self.now = limit
                    break
                self.now = max(self.now, due)
                wait = program.send(None)
        except StopIteration as stop:
            status = stop.value
        program.close()
        out = b"".join(d for _, s, d in events if s == "stdout").decode()
        err = b"".join(d for _, s, d in events if s == "stderr").decode()
        return Result(status, out, err, missing, events, waits)


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return Box(tmp_path)


def sh(box: Box, script: str, seconds: float = 100) -> Result:
    result = box.run(script, seconds)
    assert not [m for m in result.missing if "internal error" in m], result.missing
    return result


# -- constructs -------------------------------------------------------------------------------------

CONSTRUCTS = [
    ("echo hello world", "hello world\n"),
    ("echo 'a  b' \"c  d\" e\\ f", "a  b c  d e f\n"),
    ("echo a; echo b\necho c", "a\nb\nc\n"),
    ("# a comment\necho x # trailing", "x\n"),
    ("x=1; y=$x$x; echo $y ${x}z", "11 1z\n"),
    ("echo ${u:-def} ${u-d2} ${u:=set} $u", "def d2 set set\n"),
    ("e=; echo \"[${e:-dflt}]\" \"[${e-dflt}]\" \"[${e:+alt}]\" \"[${x:+alt}]\"", "[dflt] [] [] []\n"),
    ("x=abc; echo ${#x} ${#nope}", "3 0\n"),
    ("f=/a/b/c.tar.gz; echo ${f##*/} ${f#*/} ${f%.*} ${f%%.*}", "c.tar.gz a/b/c.tar.gz /a/b/c.tar /a/b/c\n"),
    ("x=hello; echo ${x/l/L} ${x//l/L} ${x:1:3} ${x:3}", "heLlo heLLo ell lo\n"),
    ("echo $((1 + 2 * 3)) $(( (1+2)*3 )) $((10/3)) $((10%3)) $((-7/2)) $((2**10))", None),
    ("x=5; echo $((x*2)) $(($x+1)) $((x+=2)) $x $((x++)) $x $((++x)) $((x-=1))", "10 6 7 7 7 8 9 8\n"),
    ("echo $((3>2)) $((3<2)) $((1&&0)) $((1||0)) $((!0)) $((7==7?10:20)) $((0x10)) $((010))", None),
    ("echo $(echo inner) `echo back` \"$(printf 'a\\n\\n\\n')\"", "inner back a\n"),
    ("echo $(echo $(echo nested))", "nested\n"),
    ("x='a b  c'; for w in $x; do echo \"<$w>\"; done", "<a>\n<b>\n<c>\n"),
    ("x='a b'; set -- $x \"$x\"; echo $#", "3\n"),
    ("IFS=:; x=a:b::c; for w in $x; do echo \"<$w>\"; done", "<a>\n<b>\n<>\n<c>\n"),
    ("set -- 'a b' c; for a in \"$@\"; do echo \"[$a]\"; done; echo \"$*\"; echo $#", "[a b]\n[c]\na b c\n2\n"),
    ("set -- x y z; shift; echo $1 $#; shift 2; echo $#", "y 2\n0\n"),
    ("if true; then echo yes; else echo no; fi", "yes\n"),
    ("if false; then echo 1; elif true; then echo 2; else echo 3; fi", "2\n"),
    ("if false; then echo 1; fi; echo $?", "0\n"),
    ("i=0; while [ $i -lt 3 ]; do echo $i; i=$((i+1)); done", "0\n1\n2\n"),
    ("i=0; until [ $i -ge 2 ]; do i=$((i+1)); echo u$i; done", "u1\nu2\n"),
    ("for i in 1 2 3 4 5; do [ $i = 2 ] && continue; [ $i = 4 ] && break; echo $i; done", "1\n3\n"),
    ("for i in a b; do for j in 1 2; do [ $j = 2 ] && continue 2; echo $i$j; done; done", "a1\nb1\n"),
    ("for i in a b; do while true; do break 2; done; echo never; done; echo out", "out\n"),
    ("set -- p q; for x; do echo $x; done", "p\nq\n"),
    ("case hello in h*o) echo glob;; *) echo other;; esac", "glob\n"),
    ("case b in a|b|c) echo abc;; esac; case x in [xyz]) echo cls;; esac", "abc\ncls\n"),
    ("case 'a*' in 'a*') echo quoted;; esac; case ab in a?) echo q;; esac; case z in (z) echo paren;; esac",
     "quoted\nq\nparen\n"),
    ("case x in y) echo no;; esac; echo $?", "0\n"),
    ("f() { echo \"f:$1:$#\"; return 3; }; f a b; echo $?", "f:a:2\n3\n"),
    ("g() { local v=inner; echo $v; }; v=outer; g; echo $v", "inner\nouter\n"),
    ("true && echo and; false && echo no; false || echo or; true || echo no", "and\nor\n"),
    ("! false; echo $?; ! true; echo $?", "0\n1\n"),
    ("{ echo g1; echo g2; }", "g1\ng2\n"),
    ("x=1; (x=2; echo in $x); echo out $x", "in 2\nout 1\n"),
    ("cd /tmp; (cd /etc; pwd); pwd", "/etc\n/tmp\n"),
    ("(exit 3); echo $?", "3\n"),
    ("A=1 B=2 env | grep '^[AB]=' ; echo ${A:-unset}", "A=1\nB=2\nunset\n"),
    ("X=1; export X; sh -c 'echo $X'; Y=2; sh -c 'echo ${Y:-noexport}'", "1\nnoexport\n"),
    ("sh -c 'echo $0 $1 $2 $#' name one two", "name one two 2\n"),
    ("echo $$ $PPID", "1 0\n"),
    ("false; echo $?; true; echo $?", "1\n0\n"),
    ("eval 'x=5; echo $x'", "5\n"),
    ("cmd='echo evaluated'; eval $cmd", "evaluated\n"),
    ("echo 'echo sourced $1' > /tmp/s.sh; . /tmp/s.sh; source /tmp/s.sh arg", "sourced\nsourced arg\n"),
    ("command -v echo sleep nosuch; echo $?", "echo\n/bin/sleep\n1\n"),
    ("which sleep cat; type echo", "/bin/sleep\n/bin/cat\necho is a shell builtin\n"),
    ("cat <<EOF\nhello $HOME\n  $((1+1))\nEOF", "hello /root\n  2\n"),
    ("cat <<'EOF'\nliteral $HOME\nEOF", "literal $HOME\n"),
    ("cat <<-EOF\n\tindented\n\tEOF", "indented\n"),
    ("read a b <<EOF\none two three\nEOF\necho \"$a|$b\"", "one|two three\n"),
    ("printf 'x\\\\y\\n' | { read -r line; echo $line; }", "x\\y\n"),
    ("printf 'l1\\nl2' | { while read l; do echo got $l; done; echo \"last=$l\"; }", "got l1\nlast=l2\n"),
    ("echo a > /tmp/f; echo b >> /tmp/f; cat < /tmp/f", "a\nb\n"),
    ("exec > /tmp/log; echo into-log; exec >&2; cat /tmp/log", ""),
    ("ls /nope 2>/dev/null; echo $?", "1\n"),
    ("echo to-err >&2 2>/dev/null; echo x 1>&2", ""),
    ("{ echo out; echo err >&2; } 2>&1 | wc -l", "2\n"),
    ("touch /tmp/g1 /tmp/g2 /tmp/h; echo /tmp/g*; echo /tmp/[gh]1 /tmp/?; echo /nomatch*", None),
    ("cd /tmp && touch a.log b.log && echo *.log && echo \"*.log\"", "a.log b.log\n*.log\n"),
    ("x=~; echo ~ $x ~/sub", "/root /root /root/sub\n"),
    ("trap 'echo bye' EXIT; echo hi", "hi\nbye\n"),
    ("trap 'echo bye $?' EXIT; exit 4", "bye 4\n"),
    ("set -e; echo one; false; echo never", "one\n"),
    ("set -e; false || true; if false; then :; fi; ! true; echo survived", "survived\n"),
    ("set -u; echo ${unset_var:-ok}; echo $unset_var; echo never", "ok\n"),
    ("set -x; echo traced", "traced\n"),
    ("x=1; readonly x; x=2; echo never", ""),
    ("unset HOME; echo ${HOME:-gone}", "gone\n"),
    ("v=$(exit 7); echo $?", "7\n"),
    ("echo \"a\\\"b\" 'c\"d' \"\\$x\" \"\\\\\"", 'a"b c"d $x \\\n'),
    ("echo 'unicode: é ✓'", "unicode: é ✓\n"),
    ("echo $'a\\tb\\x41\\'c' x$'\\n'y", "a\tbA'c x\ny\n"),
]


@pytest.mark.parametrize(("script", "expected"), CONSTRUCTS, ids=[c[0][:40] for c in CONSTRUCTS])
def test_constructs(box: Box, script: str, expected: str | None) -> None:
    result = sh(box, script)
    if expected is None:
        return  # checked by the test below with the exact value
    assert result.out == expected, result.err


def test_arithmetic_and_globs_exactly(box: Box) -> None:
    def script(prefix: str) -> str:
        return next(c[0] for c in CONSTRUCTS if c[0].startswith(prefix))

    assert sh(box, script("echo $((1 + 2")).out == "7 9 3 1 -3 1024\n"
    assert sh(box, script("echo $((3>2))")).out == "1 0 0 1 1 10 16 8\n"
    assert sh(box, script("touch /tmp/g1")).out == "/tmp/g1 /tmp/g2\n/tmp/g1 /tmp/h\n/nomatch*\n"


def test_exec_redirection_persists(box: Box) -> None:
    result = sh(box, "exec > /tmp/log; echo into-log; exec >&2; cat /tmp/log")
    assert result.out == ""
    assert result.err == "into-log\n"


def test_set_u_and_readonly_end_the_shell(box: Box) -> None:
    result = sh(box, "set -u; echo $unset_var; echo never")
    assert (result.status, result.err) == (2, "sh: unset_var: parameter not set\n")
    result = sh(box, "x=1; readonly x; x=2; echo never")
    assert (result.status, result.err) == (2, "sh: x: is read only\n")
    result = sh(box, "echo ${nope?is required}; echo never")
    assert (result.status, result.err) == (2, "sh: nope: is required\n")


def test_xtrace_goes_to_stderr(box: Box) -> None:
    assert sh(box, "set -x; echo traced").err == "+ echo traced\n"


# -- errors and exit codes --------------------------------------------------------------------------

ERRORS = [
    ("exit 1", 1, "", ""),
    ("exit 300", 44, "", ""),
    ("echo a; exit; echo b", 0, "a\n", ""),
    ("false", 1, "", ""),
    ("nosuchcmd arg", 127, "", "sh: nosuchcmd: not found\n"),
    ("/bin/nosuch", 127, "", "sh: /bin/nosuch: not found\n"),
    ("cut -d: -f1 /etc/passwd", 127, "", "sh: cut: not found\n"),
    ("echo a; fi", 2, "", 'sh: syntax error: unexpected "fi"\n'),
    ("echo before\nif true; then", 2, "before\n", 'sh: syntax error: unexpected end of file (expecting "fi")\n'),
    ("while true; do echo", 2, "", 'sh: syntax error: unexpected end of file (expecting "done")\n'),
    ("{ echo a", 2, "", 'sh: syntax error: unexpected end of file (expecting "}")\n'),
    ("echo 'unterminated", 2, "", "sh: syntax error: unterminated quoted string\n"),
    ("echo ${x", 2, "", "sh: syntax error: bad substitution\n"),
    ("for 1x in a; do :; done", 2, "", "sh: syntax error: bad for loop variable\n"),
    ("if true; fi", 2, "", 'sh: syntax error: unexpected "fi"\n'),
    ("echo $((1+))", 2, "", "sh: arithmetic syntax error\n"),
    ("echo $((1/0))", 2, "", "sh: divide by zero\n"),
    ("cd /nope; echo never", 2, "", "sh: cd: can't cd to /nope: No such file or directory\n"),
    ("cat /nope", 1, "", "cat: can't open '/nope': No such file or directory\n"),
    ("echo x > /nodir/f; echo $?", 0, "1\n", "sh: can't create /nodir/f: nonexistent directory\n"),
    ("cat < /nope; echo $?", 0, "1\n", "sh: can't open '/nope': no such file\n"),
    ("/etc/passwd", 126, "", "sh: /etc/passwd: Permission denied\n"),
    ("[ 1 -eq 1", 2, "", "sh: [: missing ]\n"),
    ("[ abc -eq 1 ]", 2, "", "sh: [: invalid number 'abc'\n"),
    ("sleep abc", 1, "", "sleep: invalid number 'abc'\n"),
    ("ls -Z", 1, "", "ls: unrecognized option: Z\n"),
    ("trap 'echo x' NOSUCH", 1, "", "sh: trap: NOSUCH: bad trap\n"),
    ("wait 99", 127, "", "sh: wait: pid 99 is not a child of this shell\n"),
    ("kill 4242", 1, "", "sh: kill: can't kill pid 4242: No such process\n"),
    ("shift 3", 1, "", "sh: shift: can't shift that many\n"),
]


@pytest.mark.parametrize(("script", "status", "out", "err"), ERRORS, ids=[e[0][:30] for e in ERRORS])
def test_errors_and_exit_codes(box: Box, script: str, status: int, out: str, err: str) -> None:
    result = sh(box, script)
    assert (result.status, result.out, result.err) == (status, out, err)


def test_unknown_command_reports_missing(box: Box) -> None:
    result = sh(box, "nosuchcmd; cut -f1 x; ls -Z")
    assert result.missing == ["command nosuchcmd", "command cut", "option -Z of ls"]


def test_unknown_program_as_the_command_line(box: Box) -> None:
    result = box.run(["/app/server", "--port=80"])
    assert (result.status, result.err, result.missing) == (127, "sh: /app/server: not found\n", ["command /app/server"])


def test_parse_is_cached_by_text() -> None:
    assert parse("echo cached; sleep 1") is parse("echo cached; sleep 1")
    assert parse("echo a; fi").error == 'syntax error: unexpected "fi"'


def test_script_files_and_stdin(box: Box) -> None:
    assert box.fs is not None
    box.fs.write("/run.sh", b"#!/bin/sh\necho script $1 $0\nexit 5\n")
    result = box.run(["sh", "/run.sh", "arg"])
    assert (result.status, result.out) == (5, "script arg /run.sh\n")
    assert sh(box, "/run.sh x").err == "sh: /run.sh: Permission denied\n"
    box.fs.chmod("/run.sh", 0o755)
    assert box.run(["/run.sh", "direct"]).out == "script direct /run.sh\n"
    assert box.run(["sh", "/nope.sh"]).err == "sh: can't open '/nope.sh': No such file or directory\n"
    box.stdin = b"echo from stdin\n"
    assert box.run(["sh"]).out == "from stdin\n"
    assert box.run(["sh", "-s"]).out == "from stdin\n"
    assert box.run(["cat"]).out == "echo from stdin\n"


def test_shells_and_options(box: Box) -> None:
    for argv in (["/bin/sh", "-c", "echo $0"], ["ash", "-c", "echo $0"], ["bash", "-c", "echo $0"]):
        assert box.run(argv).out == "sh\n"
    result = box.run(["sh", "-e", "-c", "false; echo never"])
    assert (result.status, result.out) == (1, "")
    assert box.run(["sh", "-ec", "echo ok"]).out == "ok\n"
    assert box.run(["sh", "-c"]).status == 2


# -- applets ----------------------------------------------------------------------------------------

APPLETS = [
    ("echo -n a; echo b", "ab\n"),
    ("echo -e 'a\\tb\\nc\\0101'; echo 'raw\\n'", "a\tb\ncA\nraw\\n\n"),
    ("echo -e 'stop\\chere'; echo -", "stop-\n"),
    ("printf '%s|%d|%i|%x|%X|%o|%c|%%\\n' str 42 -7 255 255 8 char", "str|42|-7|ff|FF|10|c|%\n"),
    ("printf '[%5s][%-5s][%05d][%.2s][%3d]\\n' ab ab 42 abcdef 7", "[   ab][ab   ][00042][ab][  7]\n"),
    ("printf '%s-%s\\n' a b c", "a-b\nc-\n"),
    ("printf '%b|%s\\n' 'x\\ty' 'x\\ty'", "x\ty|x\\ty\n"),
    ("printf 'no newline'; printf '\\n%d\\n' \"'A\"", "no newline\n65\n"),
    ("printf '%d\\n' abc; echo $?", "0\n1\n"),
    ("printf '%.3f %e\\n' 3.14159 1000", "3.142 1.000000e+03\n"),
    ("cat /etc/hostname /etc/resolv.conf", "web-0\nnameserver 10.96.0.10\nsearch default.svc.cluster.local\n"),
    ("echo piped | cat - /etc/hostname", "piped\nweb-0\n"),
    ("true; echo $?; false; echo $?; :; echo $?", "0\n1\n0\n"),
    ("test -e /etc/passwd && test -f /etc/passwd && test -d /etc && test ! -f /etc && echo ok", "ok\n"),
    ("[ -z '' ] && [ -n x ] && [ a = a ] && [ a != b ] && [ 2 -gt 1 ] && [ 1 -le 1 ] && echo ok", "ok\n"),
    ("[ 1 -eq 1 -a 2 -ne 2 ]; echo $?; [ 1 -eq 1 -o 2 -ne 2 ]; echo $?; [ ! 1 -eq 2 ]; echo $?", "1\n0\n0\n"),
    ("[ \\( 1 -eq 1 \\) -a \\( -d /tmp -o -f /nope \\) ]; echo $?; [ ]; echo $?; [ x ]; echo $?", "0\n1\n0\n"),
    ("touch /tmp/e; [ -s /tmp/e ]; echo $?; echo x > /tmp/e; [ -s /tmp/e ]; echo $?", "1\n0\n"),
    ("[ -x /bin/sh ] && [ -r /etc/passwd ] && [ -w /tmp ] && ! [ -x /etc/passwd ] && echo perms", "perms\n"),
    ("test -L /etc/passwd; echo $?; test -c /dev/null; echo $?; test -t 1; echo $?", "1\n0\n1\n"),
    ("mkdir /tmp/d; mkdir /tmp/d; echo $?", "1\n"),
    ("mkdir -p /tmp/x/y/z && touch /tmp/x/y/z/f && ls /tmp/x/y/z && rm -r /tmp/x && ls /tmp/x; echo $?", "f\n1\n"),
    ("rm /nope; echo $?; rm -f /nope; echo $?; mkdir /tmp/dd; rm /tmp/dd; echo $?", "1\n0\n1\n"),
    ("mkdir /tmp/e1; touch /tmp/e1/f; rmdir /tmp/e1; echo $?; rm /tmp/e1/f; rmdir /tmp/e1; echo $?", "1\n0\n"),
    ("touch -c /tmp/nope; ls /tmp/nope; echo $?", "1\n"),
    ("cd /tmp; touch b a .hidden; ls; ls -a | head -n 3; ls -1A", "a\nb\n.\n..\n.hidden\n.hidden\na\nb\n"),
    ("ls -d /tmp /etc; ls /etc/hostname", "/etc\n/tmp\n/etc/hostname\n"),
    ("echo data > /tmp/l; ls -l /tmp/l", "-rw-r--r--    1 root     root             5 Jan  1 00:00 /tmp/l\n"),
    ("ls -ld /tmp", "drwxrwxrwt    2 root     root             0 Jan  1 00:00 /tmp\n"),
    ("date; date -u +%Y-%m-%dT%H:%M:%S.%N%z; date +%s; date '+%a %b %e %T %F %Z'", None),
    ("env | grep -c PATH; env -i X=1 env; env Y=2 sh -c 'echo $Y'", "1\nX=1\n2\n"),
    ("printenv HOME; printenv NOPE; echo $?", "/root\n1\n"),
    ("id; id -u; id -g; id -un; id -gn; id -G; whoami",
     "uid=0(root) gid=0(root) groups=0(root)\n0\n0\nroot\nroot\n0\nroot\n"),
    ("hostname; hostname -s; uname; uname -n; uname -a", None),
    ("pwd; cd /tmp; pwd; cd ..; pwd; cd; pwd; cd -", "/\n/tmp\n/\n/root\n/\n"),
    ("seq 3 | head -n 2; seq 5 | head -2; seq 3 | head -c 3; echo", "1\n2\n1\n2\n1\n2\n"),
    ("seq 5 | tail -n 2; seq 5 | tail -1; seq 5 | tail -n +4; printf 'abcdef' | tail -c 2; echo", None),
    ("printf 'a b\\nc\\n' | wc; printf 'a b\\nc\\n' | wc -l; printf 'a b\\nc\\n' | wc -w; printf 'ab' | wc -c", None),
    ("echo x > /tmp/w; wc -l /tmp/w /tmp/w", "1 /tmp/w\n1 /tmp/w\n2 total\n"),
    ("printf 'apple\\nBanana\\ncherry\\n' > /tmp/g; grep an /tmp/g; grep -i b /tmp/g; grep -c a /tmp/g", None),
    ("printf 'a1\\nb2\\na3\\n' | grep -v a; printf 'a\\n' | grep -q a && echo q; grep -n 3 -", "b2\nq\n"),
    ("printf 'ab\\naab\\nb\\n' | grep -E '^a+b$'; printf 'a.b\\naxb\\n' | grep -F a.b", "ab\naab\na.b\n"),
    ("printf 'x1\\ny22\\n' | grep '[0-9]\\{2\\}'; printf 'ab\\n' | grep -o b; grep -s x /nope; echo $?", None),
    ("grep x /nope; echo $?; echo a | grep b; echo $?", "2\n1\n"),
    ("seq 2 4; seq 1 2 7; seq 3 -1 1; seq -s , 3; seq -w 8 10", None),
    ("basename /a/b/c.txt; basename /a/b/c.txt .txt; basename /; dirname /a/b/c; dirname c; dirname /c", None),
    ("expr 1 + 2; expr 7 / 2; expr 3 \\* 4; expr abc : 'a\\(.\\)'; expr length hello; expr 1 = 2; echo $?", None),
    ("echo one > /tmp/c1; cp /tmp/c1 /tmp/c2; mv /tmp/c1 /tmp/c3; cat /tmp/c2 /tmp/c3; ls /tmp/c1; echo $?", None),
    ("mkdir -p /tmp/t/s; touch /tmp/t/s/f; cp -r /tmp/t /tmp/u; ls /tmp/u/s; cp /tmp/t /tmp/v; echo $?", None),
    ("touch /tmp/m; chmod 755 /tmp/m; [ -x /tmp/m ] && echo x; chmod a-x /tmp/m; [ -x /tmp/m ] || echo nox", None),
    ("ps | head -n 1", "PID   USER     TIME  COMMAND\n"),
]

EXACT = {
    "date; date -u": "Thu Jan  1 00:00:00 UTC 2026\n2026-01-01T00:00:00.000000000+0000\n1767225600\n"
    "Thu Jan  1 00:00:00 2026-01-01 UTC\n",
    "hostname; hostname -s": "web-0\nweb-0\nLinux\nweb-0\nLinux web-0 6.1.0 #1 SMP x86_64 GNU/Linux\n",
    "seq 5 | tail -n 2; s": "4\n5\n5\n4\n5\nef\n",
    "printf 'a b\\nc\\n' | wc;": "      2       3       6\n2\n3\n2\n",
    "printf 'apple\\nBanana": "Banana\nBanana\n2\n",
    "printf 'x1\\ny22\\n' | g": "y22\nb\n2\n",
    "seq 2 4; seq 1 2 7; s": "2\n3\n4\n1\n3\n5\n7\n3\n2\n1\n1,2,3\n08\n09\n10\n",
    "basename /a/b/c.txt;": "c.txt\nc\n/\n/a/b\n.\n/\n",
    "expr 1 + 2; expr 7 / ": "3\n3\n12\nb\n5\n0\n1\n",
    "echo one > /tmp/c1; ": "one\none\n1\n",
    "mkdir -p /tmp/t/s; to": "f\n1\n",
    "touch /tmp/m; chmod 7": "x\nnox\n",
}


@pytest.mark.parametrize(("script", "expected"), APPLETS, ids=[a[0][:40] for a in APPLETS])
def test_applets(box: Box, script: str, expected: str | None) -> None:
    result = sh(box, script)
    if expected is None:
        expected = next(v for k, v in EXACT.items() if script.startswith(k))
    assert result.out == expected, result.err


def test_id_of_a_non_root_user(tmp_path: Path) -> None:
    box = Box(tmp_path, uid=65534, gid=65534, groups=[65534, 1000])
    assert sh(box, "id").out == "uid=65534(nobody) gid=65534(nobody) groups=65534(nobody),1000\n"
    box = Box(tmp_path / "b", uid=1000, gid=3000, groups=[2000])
    assert sh(box, "id; whoami").out == "uid=1000 gid=3000 groups=3000,2000\n"
    assert sh(box, "[ -w /etc ]; echo $?; [ -w /tmp ]; echo $?; [ -r /root ]; echo $?").out == "1\n0\n1\n"


def test_sleep_forms_on_the_clock(box: Box) -> None:
    for argv, seconds in ((["sleep", "1.5"], 1.5), (["sleep", "2m"], 120), (["sleep", "1h"], 3600),
                          (["sleep", "1d"], 86400), (["sleep", "1", "2s", ".5"], 3.5), (["sleep", "0"], 0)):
        before = box.now
        result = box.run(argv, seconds=100_000)
        assert result.status == 0
        assert box.now - before == int(seconds * S), argv
    result = box.run(["sleep", "infinity"], seconds=10**6)
    assert result.status is None and result.waits[-1] == Wait(None)
    assert box.run(["sleep"]).status == 1


def test_tail_f_and_top_run_until_killed(tmp_path: Path) -> None:
    box = Box(tmp_path, pid=9)
    assert box.fs is not None
    box.fs.write("/tmp/f", b"1\n2\n")
    result = box.run(["tail", "-f", "/tmp/f"], seconds=1000, signals=((500, "TERM"),))
    assert (result.out, result.status) == ("1\n2\n", 143)
    result = box.run(["tail", "-f", "/dev/null"], seconds=1000)
    assert result.status is None and result.waits[-1] == Wait(None)
    result = box.run(["top"], seconds=1000, signals=((5, "TERM"),))
    assert (result.out, result.status) == ("", 143)


# -- signals and traps ------------------------------------------------------------------------------

SIGNAL_CASES = [
    # (pid, script, signal time, signal, expected status (None = still running), expected stdout)
    (1, "echo hello; sleep 3600", 5, "TERM", None, "hello\n"),
    (7, "echo hello; sleep 3600", 5, "TERM", 143, "hello\n"),
    (7, "sleep 3600", 5, "INT", 130, ""),
    (7, "sleep 3600", 5, "HUP", 129, ""),
    (1, "trap 'exit 0' TERM; sleep 3600 & wait", 5, "TERM", 0, ""),
    (1, "trap \"exit 0\" SIGTERM; sleep 3600 & wait; echo never", 5, "TERM", 0, ""),
    (1, "trap 'echo got; exit 3' 15; sleep 10; echo after", 5, "TERM", 3, "got\n"),
    (1, "trap 'echo got' TERM; sleep 10; echo after", 5, "TERM", 0, "got\nafter\n"),
    (1, "trap 'echo got' TERM; sleep 3600 & wait; echo waited $?", 5, "TERM", 0, "got\nwaited 143\n"),
    (7, "trap '' TERM; sleep 8; echo survived", 5, "TERM", 0, "survived\n"),
    (7, "trap 'echo x' TERM; trap - TERM; sleep 20; echo never", 5, "TERM", 143, ""),
    (1, "trap 'echo int' INT; trap 'echo hup' HUP; sleep 3600 & wait; wait", 5, "INT", None, "int\n"),
    (7, "trap 'echo bye' EXIT; sleep 20", 5, "TERM", 143, ""),
    (1, "trap 'echo bye' EXIT; trap 'exit 9' TERM; sleep 100 & wait", 5, "TERM", 9, "bye\n"),
    (1, "exec sleep 3600", 5, "TERM", None, ""),
    (7, "exec sleep 3600", 5, "TERM", 143, ""),
    (7, "trap '' TERM; exec sleep 8", 5, "TERM", 0, ""),
    (7, "trap 'echo handled' TERM; exec sleep 20", 5, "TERM", 143, ""),
    (1, "while true; do echo tick; sleep 1; done", 2.5, "TERM", None, "tick\n" * 11),
    (1, "trap 'echo stop; exit 0' TERM; while true; do sleep 1; done", 2.5, "TERM", 0, "stop\n"),
]


@pytest.mark.parametrize(("pid", "script", "at", "signal", "status", "out"), SIGNAL_CASES,
                         ids=[f"pid{c[0]}-{c[1][:40]}" for c in SIGNAL_CASES])
def test_signals_and_traps(
    tmp_path: Path, pid: int, script: str, at: float, signal: str, status: int | None, out: str
) -> None:
    box = Box(tmp_path, pid=pid)
    result = box.run(script, seconds=10, signals=((at, signal),))
    assert (result.status, result.out) == (status, out), result.err


def test_plain_applet_as_pid_1_ignores_term_and_not_as_pid_1_dies(tmp_path: Path) -> None:
    result = Box(tmp_path, pid=1).run(["sleep", "3600"], seconds=4000, signals=((5, "TERM"),))
    assert result.status == 0  # ignored: slept its full hour
    result = Box(tmp_path / "x", pid=12).run(["sleep", "3600"], seconds=4000, signals=((5, "TERM"),))
    assert result.status == 143


def test_deferred_trap_runs_when_the_foreground_sleep_ends(box: Box) -> None:
    result = box.run("trap 'echo got; exit 0' TERM; sleep 30", seconds=100, signals=((5, "TERM"),))
    assert result.status == 0
    assert result.events == [(30.0, "stdout", b"got\n")]


def test_self_signals(tmp_path: Path) -> None:
    assert Box(tmp_path, pid=1).run("kill $$; kill 1; kill -9 $$; echo alive").out == "alive\n"
    result = Box(tmp_path / "a", pid=5).run("kill -TERM $$; echo never")
    assert (result.status, result.out) == (143, "")
    result = Box(tmp_path / "b", pid=5).run("kill -9 $$; echo never")
    assert result.status == 137
    result = Box(tmp_path / "c", pid=1).run("trap 'echo trapped; exit 4' TERM; kill $$; echo never")
    assert (result.status, result.out) == (4, "trapped\n")
    result = Box(tmp_path / "d", pid=1).run("trap 'echo usr' USR1; kill -s USR1 $$; kill -USR1 1; echo end")
    assert result.out == "usr\nusr\nend\n"
    result = Box(tmp_path / "e", pid=5).run("kill 1")
    assert result.missing == ["kill of pid 1 from an exec"]
    assert sh(Box(tmp_path / "f"), "kill -l").out.startswith("HUP INT QUIT KILL")


def test_kill_of_a_background_job(box: Box) -> None:
    result = box.run("sleep 100 & p=$!; kill $p; wait $p; echo st=$?; sleep 200 & kill -9 $!; wait $!; echo $?")
    assert result.out == "st=143\n137\n"
    assert box.now == T0  # nothing waited for the clock


def test_busy_loop_yields_to_the_driver(box: Box) -> None:
    result = box.run("while true; do :; done", seconds=10, max_waits=3)
    assert result.status is None
    assert result.waits == [Wait(T0)] * 3


# -- pipelines and jobs -----------------------------------------------------------------------------

PIPELINES = [
    ("echo a | grep a", "a\n"),
    ("printf 'x\\ny\\nz\\n' > /tmp/f; cat /tmp/f | wc -l", "3\n"),
    ("yes | head -n 3", "y\ny\ny\n"),
    ("yes hi | head -n 2; echo $?", "hi\nhi\n0\n"),
    ("set -o pipefail; yes | head -n 1; echo $?", "y\n141\n"),
    ("seq 10 | while read x; do echo $x; done | tail -n 2", "9\n10\n"),
    ("seq 100000 | tail -n 1", "100000\n"),
    ("seq 1000000000 | head -n 2", "1\n2\n"),
    ("echo a | false; echo $?; false | true; echo $?; ! echo | false; echo $?", "1\n0\n0\n"),
    ("x=outer; echo inner | read x; echo $x", "outer\n"),
    ("echo abc | { read v; echo got $v; }", "got abc\n"),
    ("printf 'b\\na\\n' | grep -n a | cat", "2:a\n"),
    ("echo $(seq 3 | wc -l)", "3\n"),
    ("cat /etc/hostname | cat | cat", "web-0\n"),
]


@pytest.mark.parametrize(("script", "expected"), PIPELINES, ids=[p[0][:40] for p in PIPELINES])
def test_pipelines(box: Box, script: str, expected: str) -> None:
    result = sh(box, script)
    assert (result.status, result.out) == (0, expected), result.err


def test_endless_producer_streams_through_grep_on_the_clock(box: Box) -> None:
    result = box.run("while true; do echo x; sleep 1; done | grep x", seconds=3.5)
    assert result.status is None
    assert [(t, d) for t, _, d in result.events] == [(0.0, b"x\n"), (1.0, b"x\n"), (2.0, b"x\n"), (3.0, b"x\n")]


def test_background_jobs_and_wait(box: Box) -> None:
    result = box.run("sleep 2 & sleep 1 & wait; echo done; echo $!")
    assert result.out == "done\n3\n" and box.now == T0 + 2 * S
    result = box.run("(sleep 1; echo bg) & echo fg; wait $!; echo st=$?")
    assert result.out == "fg\nbg\nst=0\n"
    assert [t for t, _, _ in result.events] == [0.0, 1.0, 1.0]
    result = box.run("(exit 3) & wait $!; echo $?; wait; echo $?")
    assert result.out == "3\n0\n"


def test_background_job_writes_interleave_with_the_foreground(box: Box) -> None:
    script = "(for i in 1 2 3; do echo bg$i; sleep 1; done) & sleep 0.5; echo fg; wait"
    result = box.run(script)
    assert [(t, d) for t, _, d in result.events] == [(0.0, b"bg1\n"), (0.5, b"fg\n"), (1.0, b"bg2\n"), (2.0, b"bg3\n")]


def test_main_exit_ends_background_jobs(box: Box) -> None:
    result = box.run("sleep 1000 & echo started")
    assert (result.status, result.out) == (0, "started\n")


# -- the manifest one-liners ------------------------------------------------------------------------


def test_manifest_echo_then_sleep(box: Box) -> None:
    result = box.run(["sh", "-c", "echo hello; sleep 3600"], seconds=4000)
    assert (result.status, result.events) == (0, [(0.0, "stdout", b"hello\n")])
    assert box.now == T0 + 3600 * S


def test_manifest_exit_1(box: Box) -> None:
    assert box.run(["sh", "-c", "exit 1"]).status == 1


def test_manifest_liveness_file(box: Box) -> None:
    assert box.fs is not None
    program = "touch /tmp/healthy; sleep 30; rm /tmp/healthy; sleep 600"
    probe = Box(box.tmp, pid=50)
    probe.fs = box.fs
    assert box.run(["sh", "-c", program], seconds=10).status is None
    assert probe.run(["cat", "/tmp/healthy"]).status == 0
    assert box.run(["sh", "-c", program], seconds=40).status is None
    result = probe.run(["cat", "/tmp/healthy"])
    assert (result.status, result.err) == (1, "cat: can't open '/tmp/healthy': No such file or directory\n")


def test_manifest_date_loop(box: Box) -> None:
    result = box.run(["sh", "-c", "while true; do echo $(date); sleep 1; done"], seconds=2)
    assert [d for _, _, d in result.events] == [
        b"Thu Jan 1 00:00:00 UTC 2026\n",
        b"Thu Jan 1 00:00:01 UTC 2026\n",
        b"Thu Jan 1 00:00:02 UTC 2026\n",
    ]


def test_manifest_plain_commands(box: Box) -> None:
    assert box.run(["cat", "/etc/resolv.conf"]).out.startswith("nameserver 10.96.0.10\n")
    assert box.run(["hostname"]).out == "web-0\n"
    assert box.run(["id"]).out == "uid=0(root) gid=0(root) groups=0(root)\n"
    assert box.run(["/bin/echo", "hi"]).out == "hi\n"
    result = box.run(["sh", "-c", 'trap "exit 0" TERM; sleep 3600 & wait'], signals=((5, "TERM"),))
    assert result.status == 0 and box.now == T0 + 5 * S


def test_exec_with_stdin_and_another_pid(tmp_path: Path) -> None:
    box = Box(tmp_path, pid=42, stdin=b"line one\nline two\n")
    assert box.run("echo $$; wc -l").out == "42\n2\n"
    assert box.run("read first; echo [$first]").out == "[line one]\n"


def test_working_dir_and_env(tmp_path: Path) -> None:
    box = Box(tmp_path, cwd="/tmp", env={"PATH": "/bin", "GREETING": "hi there"})
    assert box.run("pwd; echo $GREETING; env | grep GREETING").out == "/tmp\nhi there\nGREETING=hi there\n"
    box = Box(tmp_path / "np", env={})
    assert box.run("echo $PATH; sleep 0; echo ok").out.endswith("ok\n")


def test_mounts_through_the_shell(tmp_path: Path) -> None:
    shared, config = tmp_path / "shared", tmp_path / "cfg"
    shared.mkdir()
    config.mkdir()
    (config / "key").write_bytes(b"value\n")
    mounts = [Mount("/data", str(shared)), Mount("/etc/config", str(config), readonly=True)]
    a = Box(tmp_path / "a", mounts=mounts)
    b = Box(tmp_path / "b", mounts=[Mount("/in", str(shared))])
    assert a.run("echo from-a > /data/msg; cat /etc/config/key").out == "value\n"
    assert b.run("cat /in/msg").out == "from-a\n"
    result = a.run("echo x > /etc/config/key; echo $?; rm /etc/config/key")
    assert result.out == "1\n"
    assert result.err == (
        "sh: can't create /etc/config/key: Read-only file system\n"
        "rm: can't remove '/etc/config/key': Read-only file system\n"
    )
    assert a.run("cat /data/../../../../etc/hostname").out == "web-0\n"


def test_dev_files(box: Box) -> None:
    assert sh(box, "echo gone > /dev/null; cat /dev/null; echo x > /dev/stderr").err == "x\n"
    assert sh(box, "head -c 3 /dev/zero | wc -c").out == "3\n"
    assert sh(box, "echo out > /dev/stdout").out == "out\n"


def test_benchmark_runs(box: Box) -> None:
    cpu, written = bench_run(programs=5, seconds=3)
    assert written == 5 * 4 * len(b"tick\n")
    assert cpu >= 0
