"""The behaviour vocabulary: what an emulated container does, decided from its command line.

The same words drive the emulator (which simulates them) and ``khelper``, the small static program in
the locally built test image that does them for real on containerd, so one scenario runs on both.
A container's command line is worked out as Kubernetes does: ``command`` replaces the image's
entrypoint, ``args`` replace the image's cmd, and a ``command`` without ``args`` drops the image's cmd.

``khelper`` flags (``--flag=value`` or ``--flag value``; durations as ``500ms``, ``2s``, ``1m``, ``1h``
or a bare number of seconds)::

    --exit-after=D          exit after D of running (default: run until stopped)
    --exit-code=N           the exit code when it exits by itself (default 0)
    --log-rate=N            write N lines per second (fractions allowed)
    --log-count=N           stop logging after N lines
    --log-stream=S          stdout, stderr or both (alternating); default stdout
    --log-line-bytes=N      pad each line to N bytes; above 16 KiB the runtime splits it into P chunks
    --log-text=T            the line's prefix (default "line"); each line is "<T> <n>"
    --ready-after=D         "khelper check ready" fails before D, succeeds after
    --unhealthy-after=D     "khelper check healthy" succeeds before D, fails after
    --http-port=N           serve HTTP on port N: any path answers 200 "ok" while healthy, 503 "unhealthy"
                            from --unhealthy-after on; /redirect?loc=L answers 302 Found to L (percent-
                            decoded; a path or an absolute URL), /status?code=N answers N (100-599, else
                            400), /hang never answers (httpanswers.py has the exact bytes)
    --tcp-port=N            accept TCP connections on port N
    --grpc-port=N           serve grpc.health.v1.Health on port N (HTTP/2 without TLS): Check answers
                            SERVING while healthy, NOT_SERVING from --unhealthy-after on, for the service
                            "" and the --grpc-service name; any other name gets NOT_FOUND "unknown
                            service"; Watch and every other method UNIMPLEMENTED
    --grpc-service=NAME     one more service name that Check knows (same health as "")
    --memory-mib=M          allocate M MiB (all at once, or at --memory-mib-per-second)
    --memory-mib-per-second=R
    --cpu-millicores=N      burn N millicores of CPU
    --disk-mib=N            write N MiB to the container's writable layer at start
    --ignore-sigterm        ignore SIGTERM: only SIGKILL after the stop timeout ends it
    --sigterm-exit-code=N   exit code after SIGTERM (default 0)
    --sigterm-delay=D       take D to shut down after SIGTERM
    --termination-message=T write T to the termination message file when it exits by itself or after SIGTERM
                            (not when SIGKILL or the OOM killer ends it); the emulator writes it through the
                            container's mounts, as the process would, so the kubelet's mounted file gets it
    --termination-message-path=P
                            where that file is (default /dev/termination-log)

Exec commands: ``khelper check ready|healthy|live``, ``khelper exit N``, ``khelper sleep D``,
``khelper echo WORDS``, and the plain ``true``, ``false``, ``echo WORDS``, ``sleep D``.

Plain container commands: the pause image and ``pause`` run until stopped and exit 0 on SIGTERM;
``sleep D`` exits 0 after D and, being PID 1, ignores SIGTERM; ``sleep infinity`` runs forever;
``true`` exits 0 and ``false`` exits 1 at once. Any other command runs until stopped (the shell
subset that interprets busybox one-liners is a separate module).

A malformed flag makes the container exit with code 2 and a usage message on stderr, as the real
helper does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from kubeharness.clock import seconds_to_ns

HELPER = "khelper"
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
MAX_DURATION_NS = 2**62  # ~146 years: a longer duration means "never"
CRI_MAX_LOG_LINE = 16 * 1024

_DURATION = re.compile(r"^(?P<num>\d+(?:\.\d+)?)(?P<unit>ns|us|ms|s|m|h)?$")
_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


USAGE = (
    f"usage: {HELPER} [--exit-after=D] [--exit-code=N] [--log-rate=N] [--log-count=N] [--log-stream=S] "
    "[--log-line-bytes=N] [--log-text=T] [--ready-after=D] [--unhealthy-after=D] [--http-port=N] [--tcp-port=N] "
    "[--grpc-port=N] [--grpc-service=NAME] [--memory-mib=M] [--memory-mib-per-second=R] [--cpu-millicores=N] "
    "[--disk-mib=N] [--ignore-sigterm] [--sigterm-exit-code=N] [--sigterm-delay=D] [--termination-message=T] "
    "[--termination-message-path=P]"
)


class BehaviourError(ValueError):
    """A command line the vocabulary cannot accept; the message is what the helper would print."""


def parse_duration_ns(text: str) -> int:
    """``"1.5s"`` -> 1_500_000_000. Raises BehaviourError for anything else."""
    if text in ("inf", "infinity"):
        raise BehaviourError("infinity is not a finite duration")
    match = _DURATION.match(text.strip())
    if not match:
        raise BehaviourError(f"invalid duration {text!r} (use e.g. 500ms, 2s, 1m)")
    seconds = float(match["num"]) * _UNITS[match["unit"]]
    if not seconds * 1e9 < MAX_DURATION_NS:  # also inf: longer than anything runs is "never", as khelper does
        return MAX_DURATION_NS
    return seconds_to_ns(seconds)


@dataclass(frozen=True)
class Behaviour:
    """What a running container does; every time is relative to its start, in nanoseconds."""

    kind: str = "idle"  # idle | pause | helper | sleep | invalid
    exit_after_ns: int | None = None
    exit_code: int = 0
    log_rate: float = 0.0
    log_count: int | None = None
    log_stream: str = "stdout"
    log_line_bytes: int = 0
    log_text: str = "line"
    ready_after_ns: int = 0
    unhealthy_after_ns: int | None = None
    http_port: int | None = None
    tcp_port: int | None = None
    grpc_port: int | None = None
    grpc_service: str | None = None  # a service name Check knows besides ""
    memory_mib: float = 0.0
    memory_mib_per_second: float = 0.0
    cpu_millicores: int = 0
    disk_mib: float = 0.0
    ignore_sigterm: bool = False
    sigterm_exit_code: int = 0
    sigterm_delay_ns: int = 0
    termination_message: str | None = None  # written at a clean exit (by itself or after SIGTERM)
    termination_message_path: str = DEFAULT_TERMINATION_MESSAGE_PATH
    startup_stderr: tuple[str, ...] = field(default=())

    def memory_bytes_at(self, running_ns: int) -> int:
        """Bytes allocated after ``running_ns`` of running."""
        target = self.memory_mib
        if self.memory_mib_per_second > 0:
            target = min(target, self.memory_mib_per_second * running_ns / 1e9)
        return int(target * 1024 * 1024)

    def running_ns_to_reach(self, limit_bytes: int) -> int | None:
        """How long after start the allocation first exceeds ``limit_bytes``; None if never."""
        if limit_bytes <= 0 or self.memory_mib * 1024 * 1024 <= limit_bytes:
            return None
        if self.memory_mib_per_second <= 0:
            return 0
        # Smallest t with rate * t MiB > limit; one nanosecond past the exact crossing.
        exact_s = limit_bytes / (self.memory_mib_per_second * 1024 * 1024)
        return math.floor(exact_s * 1e9) + 1


def command_line(
    command: Sequence[str], args: Sequence[str], entrypoint: Sequence[str], cmd: Sequence[str]
) -> list[str]:
    """The argv a container runs, by Kubernetes' rules for command/args over entrypoint/cmd."""
    if command:
        return list(command) + list(args)
    return list(entrypoint) + (list(args) if args else list(cmd))


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


_INT_FLAGS = {
    "--exit-code": "exit_code",
    "--log-count": "log_count",
    "--log-line-bytes": "log_line_bytes",
    "--http-port": "http_port",
    "--tcp-port": "tcp_port",
    "--grpc-port": "grpc_port",
    "--cpu-millicores": "cpu_millicores",
    "--sigterm-exit-code": "sigterm_exit_code",
}
_FLOAT_FLAGS = {
    "--log-rate": "log_rate",
    "--memory-mib": "memory_mib",
    "--memory-mib-per-second": "memory_mib_per_second",
    "--disk-mib": "disk_mib",
}
_DURATION_FLAGS = {
    "--exit-after": "exit_after_ns",
    "--ready-after": "ready_after_ns",
    "--unhealthy-after": "unhealthy_after_ns",
    "--sigterm-delay": "sigterm_delay_ns",
}
_STR_FLAGS = {"--log-stream": "log_stream", "--log-text": "log_text", "--grpc-service": "grpc_service",
              "--termination-message": "termination_message", "--termination-message-path": "termination_message_path"}
_BOOL_FLAGS = {"--ignore-sigterm": "ignore_sigterm"}


def parse_helper_flags(flags: Sequence[str]) -> Behaviour:
    """Parse ``khelper`` flags; raises BehaviourError naming the bad flag."""
    values: dict[str, object] = {"kind": "helper"}
    i = 0
    while i < len(flags):
        token = flags[i]
        name, eq, value = token.partition("=")
        if name in _BOOL_FLAGS:
            if eq:
                raise BehaviourError(f"flag {name} takes no value")
            values[_BOOL_FLAGS[name]] = True
            i += 1
            continue
        known = name in _INT_FLAGS or name in _FLOAT_FLAGS or name in _DURATION_FLAGS or name in _STR_FLAGS
        if not known:
            raise BehaviourError(f"unknown flag {token!r}")
        if not eq:
            if i + 1 >= len(flags):
                raise BehaviourError(f"flag {name} needs a value")
            value = flags[i + 1]
            i += 1
        i += 1
        try:
            if name in _INT_FLAGS:
                number: int = int(value)
                if number < 0:
                    raise ValueError
                values[_INT_FLAGS[name]] = number
            elif name in _FLOAT_FLAGS:
                real = float(value)
                if not math.isfinite(real) or real < 0:
                    raise ValueError
                values[_FLOAT_FLAGS[name]] = real
            elif name in _DURATION_FLAGS:
                values[_DURATION_FLAGS[name]] = parse_duration_ns(value)
            else:
                values[_STR_FLAGS[name]] = value
        except ValueError as err:
            detail = f": {err}" if isinstance(err, BehaviourError) else ""
            raise BehaviourError(f"invalid value {value!r} for flag {name}{detail}") from None
    if values.get("log_stream", "stdout") not in ("stdout", "stderr", "both"):
        raise BehaviourError(f"invalid value {values['log_stream']!r} for flag --log-stream")
    for port in ("http_port", "tcp_port", "grpc_port"):
        port_number = values.get(port)
        if isinstance(port_number, int) and not 0 < port_number < 65536:
            raise BehaviourError(f"invalid value {port_number} for flag --{port.replace('_', '-')}")
    for code_flag in ("exit_code", "sigterm_exit_code"):
        code = values.get(code_flag)
        if isinstance(code, int) and code > 255:
            raise BehaviourError(f"invalid value {code} for flag --{code_flag.replace('_', '-')}: exit codes run 0-255")
    return Behaviour(**values)  # type: ignore[arg-type]


def behaviour_for(argv: Sequence[str], image_kind: str = "") -> Behaviour:
    """The behaviour of a container that runs ``argv`` from an image of ``image_kind``."""
    if image_kind == "pause" or (argv and _basename(argv[0]) == "pause"):
        return Behaviour(kind="pause")
    if not argv:
        return Behaviour(kind="idle")
    program = _basename(argv[0])
    if program == HELPER:
        try:
            return parse_helper_flags(argv[1:])
        except BehaviourError as err:
            return Behaviour(kind="invalid", exit_after_ns=0, exit_code=2, startup_stderr=(f"{HELPER}: {err}", USAGE))
    if program == "sleep" and len(argv) == 2:
        # PID 1 gets no default signal handlers, so a bare sleep ignores SIGTERM.
        if argv[1] in ("infinity", "inf"):
            return Behaviour(kind="sleep", ignore_sigterm=True)
        try:
            return Behaviour(kind="sleep", exit_after_ns=parse_duration_ns(argv[1]), ignore_sigterm=True)
        except BehaviourError:
            return Behaviour(
                kind="invalid", exit_after_ns=0, exit_code=1, startup_stderr=(f"sleep: invalid number '{argv[1]}'",)
            )
    if program == "true":
        return Behaviour(kind="sleep", exit_after_ns=0, exit_code=0)
    if program == "false":
        return Behaviour(kind="sleep", exit_after_ns=0, exit_code=1)
    return Behaviour(kind="idle")
