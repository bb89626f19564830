"""The real ``khelper`` and ``pause`` programs (images/), run as processes on this machine.

Both are compiled with gcc into a temporary directory; ``khelper`` must do for real what the CRI
emulator simulates, so its outputs are compared with the emulator's own code: log lines with
:class:`~kubeharness.emulators.cri.process.Process` on a virtual clock, malformed flags with
:func:`~kubeharness.emulators.cri.behaviour.behaviour_for`, exec subcommands with
:func:`~kubeharness.emulators.cri.exec.interpret`. Network use is limited to 127.0.0.1.
"""

from __future__ import annotations

import http.client
import math
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import pytest

from kubeharness.clock import VirtualClock
from kubeharness.emulators.cri.behaviour import USAGE, Behaviour, behaviour_for
from kubeharness.emulators.cri.exec import ExecResult, interpret
from kubeharness.emulators.cri.logs import ContainerLog
from kubeharness.emulators.cri.model import Container
from kubeharness.emulators.cri.process import Exit, Process
from kubeharness.wire.cri import api_pb2 as cri
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
KHELPER_SRC = ROOT / "images" / "khelper" / "khelper.c"
PAUSE_SRC = ROOT / "images" / "pause" / "pause.c"
NS = 1_000_000_000
MIB = 1024 * 1024


# -- building ---------------------------------------------------------------------------------------


def _compile(source: Path, out: Path) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: the C programs in images/ cannot be built here")
    cmd = [gcc, "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(out), str(source)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stderr}"
    return out


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("images-bin")


@pytest.fixture(scope="module")
def khelper(bin_dir: Path) -> Path:
    return _compile(KHELPER_SRC, bin_dir / "khelper")


@pytest.fixture(scope="module")
def pause(bin_dir: Path) -> Path:
    return _compile(PAUSE_SRC, bin_dir / "pause")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The helper's environment: its files in this test's directory, listening on loopback only."""
    return {
        **os.environ,
        "KHELPER_STATE": str(tmp_path / "khelper-state"),
        "KHELPER_DISK_FILE": str(tmp_path / "khelper-disk"),
        "KHELPER_LISTEN_ADDR": "127.0.0.1",
    }


# -- running ----------------------------------------------------------------------------------------


@contextmanager
def started(program: Path, args: Sequence[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``program``; whatever happens, kill it (by its PID) and collect it afterwards."""
    proc = subprocess.Popen(
        [str(program), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=env.get("HOME", "/")
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)


def finish(proc: subprocess.Popen[bytes], timeout: float = 10) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(), err.decode()


def run(program: Path, args: Sequence[str], env: dict[str, str], timeout: float = 10) -> tuple[int, str, str]:
    with started(program, args, env) as proc:
        return finish(proc, timeout)


def wait_for(predicate: object, timeout: float = 30.0, what: str = "condition") -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def started_at(env: dict[str, str]) -> float:
    """When the main process started, in ``time.monotonic()`` seconds: the CLOCK_MONOTONIC instant it wrote to
    its state file. Timing checks reckon from it, not from when the test spawned it, so that a slow start on a
    busy machine shifts the expectations instead of breaking them."""
    state = Path(env["KHELPER_STATE"])
    wait_for(state.exists, what="the state file")
    fields = dict(line.split("=", 1) for line in state.read_text().splitlines())
    return int(fields["start_monotonic_ns"]) / NS


def lines_due(rate: float, since_start_s: float) -> int:
    """How many lines a helper logging ``rate`` lines a second has due ``since_start_s`` after its start
    (line k is due at (k - 1) / rate)."""
    return max(0, math.floor(since_start_s * rate) + 1) if since_start_s >= 0 else 0


def handles(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has installed a handler for ``signum`` (its SigCgt mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def numbered(lines: Sequence[str], text: str = "line") -> list[int]:
    numbers = []
    for line in lines:
        prefix, _, number = line.partition(" ")
        assert prefix == text, line
        numbers.append(int(number))
    return numbers


# -- what the emulator does for the same command line ----------------------------------------------


async def emulate(argv: Sequence[str], tmp_path: Path, run_s: float) -> tuple[Exit | None, list[str], list[str]]:
    """Run the emulator's Process for ``khelper argv`` for ``run_s`` clock seconds: exit, stdout and stderr lines."""
    clock = VirtualClock()
    log_path = tmp_path / "emulated.log"
    now = clock.now_ns()
    container = Container(
        id="c1", sandbox_id="s1", name="c", config=cri.ContainerConfig(), image_id="i", log_path=str(log_path),
        created_ns=now, started_ns=now,
    )
    exits: list[Exit] = []
    process = Process(
        container, behaviour_for(["/khelper", *argv]), clock, ContainerLog(str(log_path)),
        lambda _c, e: exits.append(e), lambda _c: None,
    )
    process.start()
    await clock.advance(run_s)
    process.stop_timers()
    streams: dict[str, list[str]] = {"stdout": [], "stderr": []}
    partial = {"stdout": "", "stderr": ""}
    for record in log_path.read_text().splitlines() if log_path.exists() else []:
        _stamp, stream, tag, text = record.split(" ", 3)
        partial[stream] += text
        if tag == "F":
            streams[stream].append(partial[stream])
            partial[stream] = ""
    return (exits[0] if exits else None), streams["stdout"], streams["stderr"]


class _EmulatedProcess:
    """The two attributes of a Process that exec's interpret() reads."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.started_ns = 0


def emulated_exec(argv: Sequence[str], behaviour: Behaviour | None = None, running_ns: int = 0) -> ExecResult:
    process = cast(Process, _EmulatedProcess(behaviour or Behaviour(kind="helper")))
    return interpret(["khelper", *argv], process, running_ns)


# -- log lines and exits ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--log-rate=20", "--exit-after=0.5s"],
        ["--log-rate=50", "--log-count=5", "--log-stream=both", "--log-text=héllo wörld", "--log-line-bytes=30",
         "--exit-after=300ms", "--exit-code=7"],
        ["--log-rate", "40", "--log-stream", "stderr", "--exit-after", "0.25", "--exit-code", "255"],
        ["--log-rate=10", "--log-count=2", "--log-line-bytes=20000", "--exit-after=0.3s"],
        ["--log-rate=1000", "--exit-after=0"],
        ["--exit-after=100ms", "--exit-code=1"],
    ],
)
async def test_log_lines_and_exit_match_the_emulator(
    khelper: Path, env: dict[str, str], tmp_path: Path, args: list[str]
) -> None:
    began = time.monotonic()
    code, out, err = run(khelper, args, env)
    elapsed = time.monotonic() - began
    ending, want_out, want_err = await emulate(args, tmp_path, run_s=2.0)
    assert ending is not None
    assert code == ending.code
    assert out.splitlines() == want_out
    assert err.splitlines() == want_err
    assert (out + err).endswith("\n") or not (out + err)
    exit_after_ns = behaviour_for(["khelper", *args]).exit_after_ns
    assert exit_after_ns is not None
    assert exit_after_ns / NS - 0.02 <= elapsed < exit_after_ns / NS + 5


def test_lines_come_at_the_rate_until_sigterm_and_it_exits_0(khelper: Path, env: dict[str, str]) -> None:
    with started(khelper, ["--log-rate=20"], env) as proc:
        start = started_at(env)
        time.sleep(max(0.0, start + 0.5 - time.monotonic()))
        signalled = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        code, out, err = finish(proc)
        ended = time.monotonic()
    assert code == 0
    assert err == ""
    numbers = numbered(out.splitlines())
    assert numbers == list(range(1, len(numbers) + 1))
    # every line due before the signal, none due after the exit: about 10 on an idle machine
    assert lines_due(20, signalled - start) - 1 <= len(numbers) <= lines_due(20, ended - start), out


def test_sigterm_delay_keeps_logging_then_exits_with_the_code(khelper: Path, env: dict[str, str]) -> None:
    args = ["--log-rate=20", "--sigterm-delay=400ms", "--sigterm-exit-code=3", "--log-stream=stderr"]
    with started(khelper, args, env) as proc:
        start = started_at(env)
        time.sleep(max(0.0, start + 0.3 - time.monotonic()))
        signalled = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        code, out, err = finish(proc)
        ended = time.monotonic()
    assert code == 3
    assert out == ""
    numbers = numbered(err.splitlines())
    assert numbers == list(range(1, len(numbers) + 1))
    # the lines due until 0.4 s after the signal (about 14 on an idle machine), none after the exit
    assert lines_due(20, signalled + 0.4 - start) - 1 <= len(numbers) <= lines_due(20, ended - start), err
    assert ended - signalled >= 0.38


def test_ignore_sigterm_survives_it_and_dies_of_sigkill(khelper: Path, env: dict[str, str]) -> None:
    with started(khelper, ["--ignore-sigterm", "--sigterm-exit-code=5"], env) as proc:
        wait_for(lambda: Path(env["KHELPER_STATE"]).exists(), what="the state file")
        os.kill(proc.pid, signal.SIGTERM)
        time.sleep(0.3)
        assert proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
        code, _, _ = finish(proc)
    assert code == -signal.SIGKILL


# -- flags ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--bogus"],
        ["--log-rate=1", "bogus"],  # (a first word without "-" would be an exec subcommand off PID 1)
        ["--log-rate=1", "=x"],
        ["--log-rate=1", ""],
        ["--exit-code=-1"],
        ["--exit-code=256"],
        ["--exit-code", "99999999999999999999999"],
        ["--sigterm-exit-code=300"],
        ["--exit-code=1__0"],
        ["--exit-code=_1"],
        ["--exit-code=1.0"],
        ["--exit-code="],
        ["--exit-after=abc"],
        ["--exit-after=inf"],
        ["--exit-after=infinity"],
        ["--exit-after=-1s"],
        ["--exit-after=1e3"],
        ["--exit-after=1.5.5"],
        ["--exit-after=5 s"],
        ["--ready-after=.5s"],
        ["--sigterm-delay=5sec"],
        ["--log-stream=foo"],
        ["--log-stream=stdout", "--log-stream=Both"],
        ["--http-port=0"],
        ["--http-port=070000"],
        ["--tcp-port=+1_0_0_0_0_0"],
        ["--http-port=80", "--tcp-port=-0"],
        ["--ignore-sigterm=1"],
        ["--ignore-sigterm="],
        ["--log-rate"],
        ["--log-rate=nan"],
        ["--log-rate=inf"],
        ["--log-rate=1e400"],
        ["--log-rate=0x10"],
        ["--log-rate=1_.5"],
        ["--memory-mib=-1"],
        ["--disk-mib=1e"],
        ["--log-text"],
        ["--exit-after=1s", "--cpu-millicores=1.5"],
        ["--lög=it's"],
        ["--x=\"'\\"],
        ["--x=tab\there\x01\x7f"],
        ["--x=\u00a0\u00ad\u200b\u2028\ue000"],
        ["--x=\U0001f600 ok"],
        ["--exit-after=\u00a0oops\u3000"],
        ["--exit-code=\x1c4"],  # int() strips less whitespace than str.strip()
        ["--exit-code=\u0665\u0660\u0660"],  # Arabic-Indic digits: 500
        ["--http-port=\uff17\uff10\uff10\uff10\uff10"],  # fullwidth digits: 70000
        ["--exit-code=" + "1" * 4300],
        ["--exit-code=" + "1" * 4301],  # above CPython's int() digit limit
        ["--log-line-bytes=-\U0001d7d9"],
    ],
)
def test_a_malformed_flag_exits_2_with_the_emulators_message(
    khelper: Path, env: dict[str, str], args: list[str]
) -> None:
    behaviour = behaviour_for(["khelper", *args])
    assert behaviour.kind == "invalid"
    assert behaviour.startup_stderr[-1] == USAGE
    code, out, err = run(khelper, args, env)
    assert (code, out) == (2, "")
    assert err.splitlines() == list(behaviour.startup_stderr)


@pytest.mark.parametrize(
    "args",
    [
        ["--exit-code= 3\t"],
        ["--exit-code=+1_0"],
        ["--exit-code=-0"],
        ["--exit-code", "007", "--log-text", "--exit-code=9"],
        ["--exit-code=255", "--sigterm-exit-code=0255"],
        ["--log-rate=1_0.5e-1_0", "--memory-mib=1e-400", "--disk-mib=-0.0", "--cpu-millicores=0"],
        ["--sigterm-delay=\u00a02s\u2003", "--ready-after=1.5ms", "--unhealthy-after=1h"],
        ["--ignore-sigterm", "--ignore-sigterm", "--exit-code=4"],
        ["--http-port=00", "--http-port=65535", "--exit-code=6"],
        ["--log-stream=foo", "--log-stream=stdout", "--exit-code=1"],  # the last value is the one checked
        ["--exit-code=\u0663", "--exit-after=\u0661\u0660ms", "--log-rate=\u0665.\u0665"],  # Unicode digits
        ["--exit-after=\x1c\x1f1s\x1e", "--exit-code=\u20072\x85"],
    ],
)
def test_unusual_but_valid_flags_are_accepted(khelper: Path, env: dict[str, str], args: list[str]) -> None:
    argv = [*args, "--exit-after=0"]
    behaviour = behaviour_for(["khelper", *argv])
    assert behaviour.kind == "helper"
    assert run(khelper, argv, env) == (behaviour.exit_code, "", "")


# -- as PID 1, the way a container runs it ----------------------------------------------------------


@pytest.fixture(scope="module")
def unshare() -> list[str]:
    """A command prefix that runs a program as PID 1 of a new PID namespace, killed when the prefix dies."""
    tool = shutil.which("unshare")
    prefix = [tool or "unshare", "--pid", "--fork", "--kill-child"]
    if tool is None or subprocess.run([*prefix, "true"], capture_output=True, timeout=10, check=False).returncode:
        pytest.skip("cannot make a PID namespace here (unshare missing or not permitted)")
    return prefix


def test_as_pid_1_every_argument_is_a_flag(khelper: Path, env: dict[str, str], unshare: list[str]) -> None:
    args = ["check", "ready"]
    behaviour = behaviour_for(["khelper", *args])
    code, out, err = run(Path(unshare[0]), [*unshare[1:], str(khelper), *args], env)
    assert (code, out, err.splitlines()) == (2, "", list(behaviour.startup_stderr))


@pytest.mark.parametrize(
    ("args", "survives", "code"),
    [(["--sigterm-exit-code=4"], False, 4), (["--ignore-sigterm"], True, 0), ([], False, 0)],
)
def test_as_pid_1_sigterm_is_handled_as_the_flags_say(
    khelper: Path, env: dict[str, str], unshare: list[str], args: list[str], survives: bool, code: int
) -> None:
    with started(Path(unshare[0]), [*unshare[1:], str(khelper), "--log-rate=20", *args], env) as proc:
        wait_for(lambda: Path(env["KHELPER_STATE"]).exists(), what="the state file")
        (pid1,) = children_of(proc.pid)
        os.kill(pid1, signal.SIGTERM)
        if survives:
            time.sleep(0.3)
            assert proc.poll() is None
            os.kill(pid1, signal.SIGKILL)
            assert proc.wait(timeout=5) != 0
        else:
            assert proc.wait(timeout=5) == code


# -- exec subcommands -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["echo", "a", "b"],
        ["echo"],
        ["echo", "", "x  y", "-n"],
        ["exit", "3"],
        ["exit"],
        ["exit", "-1"],
        ["exit", "300"],
        ["exit", "-300"],
        ["exit", " 4_2 "],
        ["exit", "x"],
        ["exit", "1.5"],
        ["exit", "7", "8"],
        ["true"],
        ["false"],
        ["sleep"],
        ["sleep", "a", "b"],
        ["sleep", "inf"],
        ["sleep", "abc"],
        ["sleep", "1e3"],
        ["sleep", "10ms"],
        ["sleep", "0"],
        ["frob"],
        ["frob's"],
        [""],
        ["check", "bogus"],
        ["check"],
        ["check", "ready", "extra"],
        ["check", "healthy"],
        ["check", "live"],
    ],
)
def test_exec_subcommands_answer_as_the_emulator(khelper: Path, env: dict[str, str], argv: list[str]) -> None:
    # no state file: the checks answer as for a default container started just now
    want = emulated_exec(argv)
    began = time.monotonic()
    assert run(khelper, argv, env) == (want.exit_code, want.stdout, want.stderr)
    assert time.monotonic() - began >= want.sleep_ns / NS - 0.001


def test_exec_sleep_sleeps(khelper: Path, env: dict[str, str]) -> None:
    began = time.monotonic()
    assert run(khelper, ["sleep", "0.3"], env) == (0, "", "")
    assert 0.29 <= time.monotonic() - began < 5


def test_check_ready_and_healthy_follow_the_main_process(khelper: Path, env: dict[str, str]) -> None:
    args = ["--ready-after=1s", "--unhealthy-after=2s"]
    behaviour = behaviour_for(["khelper", *args])
    with started(khelper, args, env) as proc:
        start = started_at(env)
        answers: dict[str, set[str]] = {"before ready": set(), "ready": set(), "unhealthy": set()}

        def check(what: str) -> None:
            """`khelper check WHAT` answers as the emulator does at the moment it ran: some moment between
            the call's start and end (both answers are right where that window spans a delay's end)."""
            began = time.monotonic()
            got = run(khelper, ["check", what], env)
            ended = time.monotonic()
            answers_then = (emulated_exec(["check", what], behaviour, int((t - start) * NS)) for t in (began, ended))
            window = {(w.exit_code, w.stdout, w.stderr) for w in answers_then}
            assert got in window, (what, got, began - start, ended - start)
            if len(window) == 1:
                phase = "before ready" if ended - start < 1 else "ready" if ended - start < 2 else "unhealthy"
                answers[phase].add(what)

        for phase_at in (0.0, 1.4, 2.4):
            time.sleep(max(0.0, start + phase_at - time.monotonic()))
            for what in ("ready", "healthy", "live"):
                check(what)
        assert proc.poll() is None
        # each phase was seen by at least one check (phases are 0.4 s and more away from the calls)
        assert all(answers.values()), answers


def test_check_without_a_state_file_answers_as_for_a_fresh_container(khelper: Path, env: dict[str, str]) -> None:
    assert not Path(env["KHELPER_STATE"]).exists()
    assert run(khelper, ["check", "ready"], env) == (0, "ready\n", "")
    assert run(khelper, ["check", "healthy"], env) == (0, "healthy\n", "")
    assert emulated_exec(["check", "ready"]).stdout == "ready\n"


# -- network ----------------------------------------------------------------------------------------


def http_get(port: int, path: str = "/", method: str = "GET") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def can_connect(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_http_health_then_unhealthy_and_tcp_accepts(khelper: Path, env: dict[str, str]) -> None:
    http_port, tcp_port = free_port(), free_port()
    args = [f"--http-port={http_port}", "--tcp-port", str(tcp_port), "--unhealthy-after=1s"]
    with started(khelper, args, env) as proc:
        start = started_at(env)
        wait_for(lambda: can_connect(http_port), what="the HTTP port")
        healthy = [http_get(http_port, "/healthz"), http_get(http_port, "/"), http_get(http_port, "/", "HEAD")]
        if time.monotonic() - start < 1.0:  # else the machine was too slow to ask before the delay's end
            assert healthy == [(200, b"ok\n"), (200, b"ok\n"), (200, b"")]
        with socket.create_connection(("127.0.0.1", tcp_port), timeout=10) as conn:
            assert conn.recv(16) == b""  # accepted, then closed
        # healthy until 1 s after the start, then unhealthy: the first 503 comes no earlier
        while (answer := http_get(http_port, "/healthz")) == (200, b"ok\n"):
            assert time.monotonic() - start < 30, "never became unhealthy"
            time.sleep(0.02)
        assert answer == (503, b"unhealthy\n")
        assert time.monotonic() - start >= 1.0
        with socket.create_connection(("127.0.0.1", http_port), timeout=2) as raw:
            raw.sendall(b"GET /x HTTP/1.0\r\n\r\n")
            reply = b""
            while chunk := raw.recv(4096):
                reply += chunk
        assert reply.startswith(b"HTTP/1.0 503 ")
        assert reply.endswith(b"\r\n\r\nunhealthy\n")
        assert proc.poll() is None


def test_a_port_in_use_is_reported_and_the_helper_keeps_running(khelper: Path, env: dict[str, str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = int(holder.getsockname()[1])
        code, out, err = run(khelper, [f"--tcp-port={port}", "--exit-after=200ms", "--exit-code=4"], env)
    assert (code, out) == (4, "")
    assert err.startswith(f"khelper: cannot listen on port {port}: ")


# -- resources --------------------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_memory_is_allocated_at_once(khelper: Path, env: dict[str, str]) -> None:
    with started(khelper, ["--memory-mib=64"], env) as proc:
        wait_for(lambda: rss_mib(proc.pid) >= 62, what="64 MiB resident")
        assert rss_mib(proc.pid) < 80


def test_memory_grows_at_the_rate(khelper: Path, env: dict[str, str]) -> None:
    with started(khelper, ["--memory-mib=48", "--memory-mib-per-second=60"], env) as proc:
        start = started_at(env)
        time.sleep(0.2)
        early = rss_mib(proc.pid)
        # no faster than the rate: 0.2 s at 60 MiB/s is 12 MiB (plus the program's own few MiB)
        assert early <= 60 * (time.monotonic() - start) + 8, early
        wait_for(lambda: rss_mib(proc.pid) >= 46, what="48 MiB resident")
        assert rss_mib(proc.pid) < 64


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def cpu_demand_s(pid: int) -> tuple[float, float]:
    """Seconds ``pid`` has run on a CPU and seconds it has waited runnable for one (/proc/PID/schedstat)."""
    on_cpu, waiting, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
    return int(on_cpu) / NS, int(waiting) / NS


def test_cpu_is_burnt_at_the_millicores(khelper: Path, env: dict[str, str]) -> None:
    # What khelper controls is how much of the time it wants a CPU: 500 millicores is busy half of each period.
    # On a busy machine part of that is spent waiting for a CPU, so the time it wanted one (ran or waited
    # runnable) is the figure to check, and the time it ran is at most that.
    with started(khelper, ["--cpu-millicores=500"], env) as proc:
        wait_for(lambda: Path(env["KHELPER_STATE"]).exists(), what="the state file")
        (ran0, waited0), began = cpu_demand_s(proc.pid), time.monotonic()
        time.sleep(3.0)
        (ran1, waited1), took = cpu_demand_s(proc.pid), time.monotonic() - began
    ran, wanted = (ran1 - ran0) / took, (ran1 - ran0 + waited1 - waited0) / took
    # idle machine: ran and wanted about 0.5; three hogs a core: ran 0.14, wanted 0.76 (late wake-ups count as
    # wanting). A process burning a whole core would want 1.0 whatever the load, one burning none about 0.
    assert 0.35 <= wanted <= 0.92 and ran <= 0.65, (ran, wanted)


def online_cpus() -> int:
    return int(os.sysconf("SC_NPROCESSORS_ONLN"))


def alive(pid: int, program: Path) -> bool:
    """Whether ``pid`` is still a running (not zombie) instance of ``program``."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z" and Path(f"/proc/{pid}/exe").resolve() == program.resolve()
    except OSError:
        return False


@contextmanager
def killing_leftovers(pids: list[int], program: Path) -> Iterator[None]:
    """Kill the burner processes in ``pids`` that outlive the test (they should die with their parent)."""
    try:
        yield
    finally:
        for pid in pids:
            if alive(pid, program):
                os.kill(pid, signal.SIGKILL)


def test_cpu_above_a_core_uses_helper_processes_that_die_with_it(khelper: Path, env: dict[str, str]) -> None:
    if online_cpus() < 2:
        pytest.skip("one CPU: khelper starts no burner processes beside itself")
    burners: list[int] = []
    with killing_leftovers(burners, khelper), started(khelper, ["--cpu-millicores=1100"], env) as proc:
        wait_for(lambda: len(children_of(proc.pid)) == 1, what="the burner process")
        burners += children_of(proc.pid)
        assert alive(burners[0], khelper)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
        wait_for(lambda: not alive(burners[0], khelper), what="the burner to die with its parent")


def test_cpu_burner_processes_are_limited_by_the_cpus(khelper: Path, env: dict[str, str]) -> None:
    burners: list[int] = []
    with killing_leftovers(burners, khelper), started(
        khelper, ["--cpu-millicores=99999999999999999999", "--exit-after=2s"], env
    ) as proc:
        # the burners are started after the state file is written, then no more
        wait_for(lambda: len(children_of(proc.pid)) >= online_cpus() - 1, what="the burners")
        burners += children_of(proc.pid)
        assert len(burners) == online_cpus() - 1
        assert finish(proc) == (0, "", "")
        wait_for(lambda: not any(alive(pid, khelper) for pid in burners), what="the burners to end")


def test_disk_mib_are_written_at_start(khelper: Path, env: dict[str, str]) -> None:
    disk = Path(env["KHELPER_DISK_FILE"])
    with started(khelper, ["--disk-mib=1.5"], env):
        wait_for(lambda: disk.exists() and disk.stat().st_size == int(1.5 * MIB), what="the disk file")
        assert disk.stat().st_blocks * 512 >= int(1.5 * MIB)


# -- pause ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_pause_exits_0_on_sigterm_and_sigint(pause: Path, env: dict[str, str], signum: int) -> None:
    with started(pause, [], env) as proc:
        wait_for(lambda: handles(proc.pid, signum), what="pause to install its signal handlers")
        assert proc.poll() is None
        os.kill(proc.pid, signum)
        assert finish(proc) == (0, "", "")


@pytest.mark.parametrize("program", ["pause", "khelper"])
def test_inherited_children_are_reaped(request: pytest.FixtureRequest, env: dict[str, str], program: str) -> None:
    binary: Path = request.getfixturevalue(program)
    sh = shutil.which("sh")
    if sh is None:
        pytest.skip("no sh to give the program a child")
    # the shell starts a child, then becomes the program (same PID), which inherits the child. The child lives
    # until the test ends it (a short-lived one could come and go unseen on a loaded machine)
    with started(Path(sh), ["-c", f'sleep 1000 & exec "{binary}"'], env) as proc:
        wait_for(lambda: bool(children_of(proc.pid)), what="the child")
        wait_for(lambda: os.path.realpath(f"/proc/{proc.pid}/exe") == str(binary.resolve())
                 and handles(proc.pid, signal.SIGCHLD), what="the shell to become the program and it to handle SIGCHLD")
        (child,) = children_of(proc.pid)
        os.kill(child, signal.SIGKILL)
        # a zombie child is still listed: the list empties only once the program has reaped it
        wait_for(lambda: not children_of(proc.pid), what="the child to end and be reaped")
        assert proc.poll() is None
        os.kill(proc.pid, signal.SIGTERM)
        assert finish(proc)[0] == 0


# -- termination messages ---------------------------------------------------------------------------------


def test_the_termination_message_is_written_at_exit_and_after_sigterm(khelper: Path, env: dict[str, str],
                                                                      tmp_path: Path) -> None:
    path = tmp_path / "termination-log"
    assert run(khelper, ["--exit-after=0", "--exit-code=3", "--termination-message=bye now",
                         f"--termination-message-path={path}"], env) == (3, "", "")
    assert path.read_bytes() == b"bye now"
    Path(env["KHELPER_STATE"]).unlink()  # so that the next wait is for the next process
    with started(khelper, ["--termination-message=stopped", f"--termination-message-path={path}"], env) as proc:
        wait_for(lambda: Path(env["KHELPER_STATE"]).exists(), what="the state file")
        os.kill(proc.pid, signal.SIGTERM)
        assert finish(proc) == (0, "", "")
    assert path.read_bytes() == b"stopped"
    path.write_bytes(b"")
    Path(env["KHELPER_STATE"]).unlink()
    with started(khelper, ["--ignore-sigterm", "--termination-message=no", f"--termination-message-path={path}"],
                 env) as proc:
        wait_for(lambda: Path(env["KHELPER_STATE"]).exists(), what="the state file")
        os.kill(proc.pid, signal.SIGKILL)
        finish(proc)
    assert path.read_bytes() == b""  # SIGKILL leaves no time to write it


def test_an_unwritable_termination_message_path_is_reported_as_the_emulator_reports_it(
        khelper: Path, env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such"
    code, out, err = run(khelper, ["--exit-after=0", "--termination-message=x",
                                   f"--termination-message-path={missing}"], env)
    assert (code, out, err) == (0, "", f"khelper: cannot write {missing}: No such file or directory\n")
