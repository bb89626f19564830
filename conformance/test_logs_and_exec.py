"""Container logs (the CRI log format, streams, long lines, reopening after rotation) and ExecSync."""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from kubeharness.conformance.plugin import code_name
from kubeharness.conformance.target import BUSYBOX, Target
from kubeharness.wire.cri import api_pb2 as api

Observe = Callable[[str, Any], None]

CRI_LINE = re.compile(
    rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d) (stdout|stderr) ([FP]) (.*)$", re.DOTALL
)
MAX_LINE = 16 * 1024


@dataclass
class Record:
    """One line of a CRI log file."""

    ns: int
    zone: str
    stream: str
    tag: str
    text: bytes


def _ns(stamp: bytes, fraction: bytes | None, zone: bytes) -> int:
    seconds = calendar.timegm(time.strptime(stamp.decode(), "%Y-%m-%dT%H:%M:%S"))
    if zone != b"Z":
        sign = 1 if zone[:1] == b"+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds * 10**9 + int((fraction or b"").ljust(9, b"0"))


def read_log(path: Path) -> list[Record]:
    """The complete lines of a CRI log file (an unfinished last line is left out); any other line fails."""
    if not path.exists():
        return []
    records = []
    for raw in path.read_bytes().split(b"\n")[:-1]:
        match = CRI_LINE.match(raw)
        assert match is not None, f"not a CRI log line: {raw[:120]!r}"
        stamp, fraction, zone, stream, tag, text = match.groups()
        records.append(Record(_ns(stamp, fraction, zone), zone.decode(), stream.decode(), tag.decode(), text))
    return records


def joined(records: list[Record]) -> list[tuple[str, bytes]]:
    """Logical lines: (stream, text) with P chunks joined to the F that ends them."""
    lines: list[tuple[str, bytes]] = []
    pending: dict[str, bytes] = {}
    for r in records:
        pending[r.stream] = pending.get(r.stream, b"") + r.text
        if r.tag == "F":
            lines.append((r.stream, pending.pop(r.stream)))
    return lines


def log_path(pod: api.PodSandboxConfig, name: str) -> Path:
    return Path(pod.log_directory) / name / "0.log"


async def logged(target: Target, path: Path, count: int) -> list[Record]:
    """The log's records once it holds ``count`` complete logical lines."""

    async def enough() -> bool:
        return len(joined(read_log(path))) >= count

    await target.until(enough, 20, f"{count} lines in {path.name}")
    return read_log(path)


def texts(n: int, first: int = 1) -> list[bytes]:
    return [f"line {i}".encode() for i in range(first, first + n)]


# -- the log format ----------------------------------------------------------------------------------


async def test_log_lines_are_timestamped_stdout_full_lines(target: Target, observe: Observe) -> None:
    _, cid, pod = await target.running_container("fmt", ["--log-rate=10", "--log-count=3"])
    records = await logged(target, log_path(pod, "fmt"), 3)
    observe("records", [[r.stream, r.tag, r.text.decode()] for r in records])
    observe("zones", sorted({r.zone for r in records}))
    assert [(r.stream, r.tag, r.text) for r in records] == [("stdout", "F", t) for t in texts(3)]
    assert {r.zone for r in records} == {"Z"}
    started = (await target.status(cid)).started_at
    assert abs(records[0].ns - started) < 10**9
    assert records[0].ns <= records[1].ns <= records[2].ns


async def test_log_lines_come_at_the_rate_in_order(target: Target) -> None:
    _, _, pod = await target.running_container("rate", ["--log-rate=10", "--log-count=6"])
    records = await logged(target, log_path(pod, "rate"), 6)
    assert [r.text for r in records] == texts(6)
    spread_s = (records[-1].ns - records[0].ns) / 1e9
    assert 0.3 <= spread_s <= 2.0  # lines 1..6 are due 0.5 s apart in all


async def test_the_log_file_is_created_at_start_even_when_nothing_is_written(target: Target) -> None:
    _, cid, pod = await target.running_container("quiet", [])
    await target.wait(0.5)
    assert (await target.status(cid)).log_path == str(log_path(pod, "quiet"))
    assert log_path(pod, "quiet").exists()
    assert read_log(log_path(pod, "quiet")) == []


async def test_stderr_lines_are_tagged_stderr(target: Target, observe: Observe) -> None:
    _, _, pod = await target.running_container("err", ["--log-rate=10", "--log-count=2", "--log-stream=stderr"])
    records = await logged(target, log_path(pod, "err"), 2)
    observe("records", [[r.stream, r.tag, r.text.decode()] for r in records])
    assert [(r.stream, r.tag, r.text) for r in records] == [("stderr", "F", t) for t in texts(2)]


async def test_both_streams_alternate_odd_stdout_even_stderr(target: Target) -> None:
    _, _, pod = await target.running_container("both", ["--log-rate=10", "--log-count=4", "--log-stream=both"])
    records = await logged(target, log_path(pod, "both"), 4)
    by_text = {r.text: r.stream for r in records}
    assert by_text == {b"line 1": "stdout", b"line 2": "stderr", b"line 3": "stdout", b"line 4": "stderr"}


@pytest.mark.parametrize(
    ("line_bytes", "chunks"),
    [
        (MAX_LINE, [("F", MAX_LINE)]),
        (MAX_LINE + 1, [("P", MAX_LINE), ("F", 1)]),
        (40000, [("P", MAX_LINE), ("P", MAX_LINE), ("F", 40000 - 2 * MAX_LINE)]),
    ],
    ids=["16384-one-full-line", "16385-partial-then-1-byte", "40000-two-partials-then-the-rest"],
)
async def test_a_line_over_16_kib_is_split_into_16_kib_partial_chunks(
    target: Target, observe: Observe, line_bytes: int, chunks: list[tuple[str, int]]
) -> None:
    name = f"long{line_bytes}"
    args = ["--log-rate=10", "--log-count=2", f"--log-line-bytes={line_bytes}"]
    _, _, pod = await target.running_container(name, args)
    records = await logged(target, log_path(pod, name), 2)
    observe("chunks", [[r.tag, len(r.text)] for r in records])
    assert [(r.tag, len(r.text)) for r in records] == chunks * 2
    lines = joined(records)
    assert [len(text) for _, text in lines] == [line_bytes, line_bytes]
    for number, (stream, text) in enumerate(lines, 1):
        head = f"line {number} ".encode()
        assert stream == "stdout"
        assert text == head + b"x" * (line_bytes - len(head))


# -- ReopenContainerLog ------------------------------------------------------------------------------


async def test_reopen_after_a_rename_starts_a_fresh_file_and_loses_no_line(target: Target, observe: Observe) -> None:
    _, cid, pod = await target.running_container("rot", ["--log-rate=20", "--log-count=40"])
    path = log_path(pod, "rot")
    await logged(target, path, 8)
    rotated = path.with_name("0.log.20260101-000000")
    path.rename(rotated)
    await target.runtime.ReopenContainerLog(api.ReopenContainerLogRequest(container_id=cid), timeout=30)
    assert path.exists()
    fresh = await logged(target, path, 40 - len(joined(read_log(rotated))))
    before = [text for _, text in joined(read_log(rotated))]
    after = [text for _, text in joined(fresh)]
    observe("split", [len(before) >= 8, len(after) > 0])
    assert len(before) >= 8 and after
    assert before + after == texts(40)


async def test_without_reopen_lines_follow_the_renamed_file(target: Target) -> None:
    _, _, pod = await target.running_container("follow", ["--log-rate=20", "--log-count=20"])
    path = log_path(pod, "follow")
    await logged(target, path, 4)
    rotated = path.with_name("0.log.old")
    path.rename(rotated)
    records = await logged(target, rotated, 20)
    assert [r.text for r in records] == texts(20)
    assert not path.exists()


async def test_reopening_the_log_of_an_exited_container_is_refused(target: Target, observe: Observe) -> None:
    _, cid, _ = await target.running_container("gone", ["--exit-after=200ms"])
    await target.exited(cid, 20)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await target.runtime.ReopenContainerLog(api.ReopenContainerLogRequest(container_id=cid), timeout=30)
    observe("code", code_name(info.value))
    observe("message", info.value.details())
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    assert info.value.details() == "container is not running"


async def test_reopening_the_log_of_an_unknown_container_is_not_found(target: Target, observe: Observe) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await target.runtime.ReopenContainerLog(api.ReopenContainerLogRequest(container_id="0" * 64), timeout=30)
    observe("code", code_name(info.value))
    observe("message", info.value.details())
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


# -- ExecSync ----------------------------------------------------------------------------------------


async def exec_sync(target: Target, cid: str, cmd: list[str], timeout_s: int = 0) -> api.ExecSyncResponse:
    request = api.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=timeout_s)
    return await target.call(target.runtime.ExecSync(request, timeout=60))


def outcome(resp: api.ExecSyncResponse) -> list[Any]:
    return [resp.exit_code, resp.stdout.decode(errors="replace"), resp.stderr.decode(errors="replace")]


@pytest.mark.parametrize(
    ("cmd", "exit_code"),
    [(["khelper", "exit", "3"], 3), (["sh", "-c", "exit 7"], 7)],
    ids=["khelper-exit-3", "sh-exit-7"],
)
async def test_exec_reports_the_exit_code(target: Target, observe: Observe, cmd: list[str], exit_code: int) -> None:
    _, cid, _ = await target.running_container("code", [])
    resp = await exec_sync(target, cid, cmd)
    observe("result", outcome(resp))
    assert outcome(resp) == [exit_code, "", ""]


async def test_exec_returns_stdout(target: Target) -> None:
    _, cid, _ = await target.running_container("out", [])
    assert outcome(await exec_sync(target, cid, ["echo", "hi"])) == [0, "hi\n", ""]


async def test_exec_returns_stderr_apart_from_stdout(target: Target) -> None:
    _, cid, _ = await target.running_container("stderr", [])
    assert outcome(await exec_sync(target, cid, ["sh", "-c", "echo out; echo err >&2"])) == [0, "out\n", "err\n"]


async def test_exec_of_cat_on_a_missing_file_fails_with_the_busybox_message(target: Target, observe: Observe) -> None:
    _, cid, _ = await target.running_container("cat", [], image=BUSYBOX, command=["sleep", "3600"])
    resp = await exec_sync(target, cid, ["cat", "/tmp/healthy"])
    observe("result", outcome(resp))
    assert outcome(resp) == [1, "", "cat: can't open '/tmp/healthy': No such file or directory\n"]


async def test_exec_of_an_unknown_executable_fails_the_call(target: Target, observe: Observe) -> None:
    _, cid, _ = await target.running_container("noexe", [])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await exec_sync(target, cid, ["no-such-program", "--flag"])
    details = info.value.details() or ""
    observe("code", code_name(info.value))
    observe("message", re.sub(r'failed to start exec "[0-9a-f]+"', 'failed to start exec "<id>"', details))
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    assert re.fullmatch(
        r'failed to exec in container: failed to start exec "[0-9a-f]{64}": OCI runtime exec failed: exec failed: '
        r'unable to start container process: exec: "no-such-program": executable file not found in \$PATH: unknown',
        details,
    ), details


async def test_exec_past_its_timeout_fails_with_deadline_exceeded(target: Target, observe: Observe) -> None:
    _, cid, _ = await target.running_container("slow", [])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await exec_sync(target, cid, ["sleep", "10"], timeout_s=1)
    details = info.value.details() or ""
    observe("code", code_name(info.value))
    observe("message", details)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert details == "failed to exec in container: timeout 1s exceeded: context deadline exceeded"
    # the container goes on running, and a later exec works
    assert (await target.status(cid)).state == api.CONTAINER_RUNNING
    assert (await exec_sync(target, cid, ["true"])).exit_code == 0


async def test_exec_within_its_timeout_succeeds(target: Target) -> None:
    _, cid, _ = await target.running_container("quick", [])
    assert outcome(await exec_sync(target, cid, ["sleep", "0.2"], timeout_s=5)) == [0, "", ""]


async def test_the_ready_check_fails_until_ready_after(target: Target, observe: Observe) -> None:
    # 10 s: an exec right after the start answers "not ready" even on a loaded machine (1.5 s did not)
    _, cid, _ = await target.running_container("ready", ["--ready-after=10s"])
    early = await exec_sync(target, cid, ["khelper", "check", "ready"])
    answers: list[api.ExecSyncResponse] = []

    async def ready() -> bool:
        answers.append(await exec_sync(target, cid, ["khelper", "check", "ready"]))
        return answers[-1].exit_code == 0

    await target.until(ready, 60, "khelper check ready to succeed")
    late = answers[-1]
    observe("early", outcome(early))
    observe("late", outcome(late))
    assert outcome(early) == [1, "", "not ready yet\n"]
    assert outcome(late) == [0, "ready\n", ""]


async def test_the_health_check_fails_after_unhealthy_after(target: Target) -> None:
    # 10 s: the first check, right after the start, is healthy even on a loaded machine (1 s was not enough)
    _, cid, _ = await target.running_container("health", ["--unhealthy-after=10s"])
    assert outcome(await exec_sync(target, cid, ["khelper", "check", "healthy"])) == [0, "healthy\n", ""]
    answers: list[api.ExecSyncResponse] = []

    async def unhealthy() -> bool:
        answers.append(await exec_sync(target, cid, ["khelper", "check", "live"]))
        return answers[-1].exit_code != 0

    await target.until(unhealthy, 60, "khelper check live to fail")
    assert outcome(answers[-1]) == [1, "", "unhealthy\n"]


async def test_exec_in_an_exited_container_is_refused(target: Target, observe: Observe) -> None:
    _, cid, _ = await target.running_container("dead", ["--exit-after=200ms"])
    await target.exited(cid, 20)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await exec_sync(target, cid, ["true"])
    observe("code", code_name(info.value))
    observe("message", info.value.details())
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    assert info.value.details() == "failed to exec in container: container is in CONTAINER_EXITED state"
