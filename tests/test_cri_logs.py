"""Container logs through the real gRPC client: where the file is, the CRI log format, what the behaviour
writes and when (on the virtual clock), long-line splitting, the rotation handshake
(rename + ReopenContainerLog) and log paths that try to leave the log directory.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from kubeharness.wire.cri import api_pb2 as api
from tests.conftest import CriHarness

NS = 1_000_000_000
HELPER_IMAGE = "kubeharness.test/khelper:1"
CRI_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z (stdout|stderr) (F|P) .*$")
MAX_LINE = 16 * 1024


# -- helpers ----------------------------------------------------------------------------------------


def stamp(ns: int) -> str:
    """RFC 3339 with nanoseconds, computed independently of the emulator."""
    seconds, fraction = divmod(ns, NS)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{fraction:09d}Z"


def read_lines(path: Path) -> list[str]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), "a log file must end with a complete line"
    lines = data.decode().splitlines()
    for line in lines:
        assert CRI_LINE.match(line), f"not a CRI log line: {line[:120]!r}"
    return lines


def expected(start_ns: int, numbers: range, every_ns: int, stream: str = "stdout", text: str = "line") -> list[str]:
    return [f"{stamp(start_ns + (n - 1) * every_ns)} {stream} F {text} {n}" for n in numbers]


async def start(cri: CriHarness, args: list[str], name: str = "pod") -> tuple[api.PodSandboxConfig, str, int, Path]:
    """(sandbox config, container id, started_at, log file) of a started helper container."""
    cfg, _, cid, started, path = await start_in(cri, args, name)
    return cfg, cid, started, path


async def start_in(
    cri: CriHarness, args: list[str], name: str = "pod"
) -> tuple[api.PodSandboxConfig, str, str, int, Path]:
    """(sandbox config, sandbox id, container id, started_at, log file) of a started helper container."""
    cfg = cri.sandbox_config(name=name)
    sid = await cri.run_sandbox(cfg)
    await cri.pull(HELPER_IMAGE)
    cid = await cri.create(sid, cfg, args=args)
    await cri.start_container(cid)
    status = await cri.status(cid)
    return cfg, sid, cid, status.started_at, Path(cfg.log_directory) / "c" / "0.log"


async def expect_code(call: Awaitable[object], code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    return info.value


def reopen(cri: CriHarness, cid: str) -> Awaitable[api.ReopenContainerLogResponse]:
    return cri.runtime.ReopenContainerLog(api.ReopenContainerLogRequest(container_id=cid))


def all_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


# -- where the log is and what it looks like --------------------------------------------------------


async def test_log_file_is_at_log_directory_joined_with_log_path(cri: CriHarness) -> None:
    cfg, cid, _, path = await start(cri, ["--log-rate=1"])
    status = await cri.status(cid)
    assert status.log_path == str(Path(cfg.log_directory) / "c" / "0.log")
    assert path.is_file()
    assert read_lines(path)[0].endswith(" stdout F line 1")


async def test_a_container_that_writes_nothing_still_has_an_empty_log_file(cri: CriHarness) -> None:
    _, _, _, path = await start(cri, [])
    await cri.clock.advance(10)
    assert path.is_file()
    assert path.read_bytes() == b""


async def test_log_rate_writes_lines_stamped_when_due(cri: CriHarness) -> None:
    _, _, started, path = await start(cri, ["--log-rate=2"])
    # line n is due at start + (n - 1) * 0.5 s: lines 1..6 by 2.75 s
    await cri.clock.advance(2.75)
    lines = read_lines(path)
    assert lines == expected(started, range(1, 7), NS // 2)
    stamps = [datetime.strptime(line.split(" ")[0][:26], "%Y-%m-%dT%H:%M:%S.%f") for line in lines]
    assert all((b - a).total_seconds() == 0.5 for a, b in itertools.pairwise(stamps))
    # the line due exactly at 3 s is written when the clock reaches 3 s, not later
    await cri.clock.advance(0.25)
    assert read_lines(path) == expected(started, range(1, 8), NS // 2)


async def test_a_jump_of_the_clock_writes_every_line_with_its_own_timestamp(cri: CriHarness) -> None:
    _, _, started, path = await start(cri, ["--log-rate=10"])
    await cri.clock.advance(59.95)
    assert read_lines(path) == expected(started, range(1, 601), NS // 10)


async def test_log_stream_stderr(cri: CriHarness) -> None:
    _, _, started, path = await start(cri, ["--log-rate=1", "--log-stream=stderr"])
    await cri.clock.advance(2.5)
    assert read_lines(path) == expected(started, range(1, 4), NS, stream="stderr")


async def test_log_stream_both_alternates_stdout_and_stderr(cri: CriHarness) -> None:
    _, _, started, path = await start(cri, ["--log-rate=1", "--log-stream=both"])
    await cri.clock.advance(3.5)
    assert read_lines(path) == [
        f"{stamp(started)} stdout F line 1",
        f"{stamp(started + NS)} stderr F line 2",
        f"{stamp(started + 2 * NS)} stdout F line 3",
        f"{stamp(started + 3 * NS)} stderr F line 4",
    ]


async def test_log_text_sets_the_prefix(cri: CriHarness) -> None:
    _, _, started, path = await start(cri, ["--log-rate=1", "--log-text=hello world"])
    await cri.clock.advance(1.5)
    assert read_lines(path) == expected(started, range(1, 3), NS, text="hello world")


async def test_log_count_stops_logging_but_not_the_container(cri: CriHarness) -> None:
    _, cid, started, path = await start(cri, ["--log-rate=4", "--log-count=3"])
    await cri.clock.advance(60)
    assert read_lines(path) == expected(started, range(1, 4), NS // 4)
    assert (await cri.status(cid)).state == api.CONTAINER_RUNNING


async def test_no_line_at_or_after_the_exit(cri: CriHarness) -> None:
    _, cid, started, path = await start(cri, ["--log-rate=2", "--exit-after=2s"])
    await cri.clock.advance(10)
    status = await cri.status(cid)
    assert (status.state, status.finished_at) == (api.CONTAINER_EXITED, started + 2 * NS)
    # lines at 0, .5, 1, 1.5 s; the one due at 2 s (the exit instant) is never written
    assert read_lines(path) == expected(started, range(1, 5), NS // 2)


async def test_no_line_after_stop(cri: CriHarness) -> None:
    _, cid, started, path = await start(cri, ["--log-rate=2"])
    await cri.clock.advance(1.25)
    await cri.runtime.StopContainer(api.StopContainerRequest(container_id=cid, timeout=0))
    await cri.clock.advance(10)
    assert (await cri.status(cid)).finished_at == started + 1_250_000_000
    assert read_lines(path) == expected(started, range(1, 4), NS // 2)


async def test_a_process_keeps_logging_while_it_shuts_down_and_stops_at_its_exit(cri: CriHarness) -> None:
    _, cid, started, path = await start(cri, ["--log-rate=1", "--sigterm-delay=2500ms"])
    await cri.clock.advance(0.5)
    await cri.drive(cri.runtime.StopContainer(api.StopContainerRequest(container_id=cid, timeout=30)))
    status = await cri.status(cid)
    assert (status.state, status.exit_code, status.reason) == (api.CONTAINER_EXITED, 0, "Completed")
    # SIGTERM arrived at 0.5 s or a few driving steps later; the exit is 2.5 s after it
    assert started + 3 * NS <= status.finished_at < started + 4 * NS
    await cri.clock.advance(10)
    due_before_exit = (status.finished_at - started - 1) // NS + 1  # lines due at 0, 1, 2, 3 s ... < exit
    assert read_lines(path) == expected(started, range(1, due_before_exit + 1), NS)
    assert due_before_exit >= 4


# -- long lines ----------------------------------------------------------------------------------------


async def test_a_line_over_16_kib_is_split_into_partial_chunks_and_a_final_one(cri: CriHarness) -> None:
    _, _, started, path = await start(cri, ["--log-rate=1", "--log-count=2", "--log-line-bytes=40000"])
    await cri.clock.advance(5)
    lines = read_lines(path)
    assert len(lines) == 6  # two logical lines of 40000 bytes: 16384 + 16384 + 7232 each
    for n, group in ((1, lines[:3]), (2, lines[3:])):
        parts = [line.split(" ", 3) for line in group]
        assert [p[0] for p in parts] == [stamp(started + (n - 1) * NS)] * 3
        assert [p[1] for p in parts] == ["stdout"] * 3
        assert [p[2] for p in parts] == ["P", "P", "F"]
        assert [len(p[3]) for p in parts] == [MAX_LINE, MAX_LINE, 40000 - 2 * MAX_LINE]
        content = "".join(p[3] for p in parts)
        assert len(content) == 40000
        assert content.startswith(f"line {n} ")
        assert content == f"line {n} " + "x" * (40000 - len(f"line {n} "))


async def test_a_line_of_exactly_16_kib_is_one_full_line(cri: CriHarness) -> None:
    _, _, _, path = await start(cri, ["--log-rate=1", "--log-count=1", f"--log-line-bytes={MAX_LINE}"])
    await cri.clock.advance(1)
    lines = read_lines(path)
    assert len(lines) == 1
    _, stream, tag, text = lines[0].split(" ", 3)
    assert (stream, tag, len(text)) == ("stdout", "F", MAX_LINE)


# -- rotation: rename + ReopenContainerLog ----------------------------------------------------------------


async def test_reopen_after_rename_continues_in_a_fresh_file_without_loss_or_duplication(cri: CriHarness) -> None:
    _, cid, started, path = await start(cri, ["--log-rate=1"])
    await cri.clock.advance(2.5)  # lines 1..3
    rotated = path.with_name("0.log.20260101-000002")
    path.rename(rotated)  # what kubelet's log manager does
    await cri.clock.advance(1)  # line 4: the open file was renamed, so it lands in the rotated file
    assert not path.exists()
    await reopen(cri, cid)
    assert path.is_file()
    await cri.clock.advance(2)  # lines 5, 6 in the fresh file

    old, new = read_lines(rotated), read_lines(path)
    assert old == expected(started, range(1, 5), NS)
    assert new == expected(started, range(5, 7), NS)
    assert len(set(old) | set(new)) == len(old) + len(new) == 6


async def test_reopen_without_a_rename_keeps_appending_to_the_same_file(cri: CriHarness) -> None:
    _, cid, started, path = await start(cri, ["--log-rate=1"])
    await cri.clock.advance(1.5)  # lines 1, 2
    inode = path.stat().st_ino
    await reopen(cri, cid)
    await cri.clock.advance(2)  # lines 3, 4
    assert path.stat().st_ino == inode
    assert read_lines(path) == expected(started, range(1, 5), NS)


async def test_reopen_twice_rotates_twice(cri: CriHarness) -> None:
    _, cid, started, path = await start(cri, ["--log-rate=1"])
    await cri.clock.advance(1.5)  # lines 1, 2
    path.rename(path.with_name("0.log.1"))
    await reopen(cri, cid)
    await cri.clock.advance(2)  # lines 3, 4
    path.rename(path.with_name("0.log.2"))
    await reopen(cri, cid)
    await cri.clock.advance(1)  # line 5
    assert read_lines(path.with_name("0.log.1")) == expected(started, range(1, 3), NS)
    assert read_lines(path.with_name("0.log.2")) == expected(started, range(3, 5), NS)
    assert read_lines(path) == expected(started, range(5, 6), NS)


async def test_reopen_of_a_container_that_is_not_running_is_refused_as_containerd_does(cri: CriHarness) -> None:
    cfg, sid, cid, _, _ = await start_in(cri, ["--log-rate=1"])
    await cri.runtime.StopContainer(api.StopContainerRequest(container_id=cid, timeout=0))
    assert (await cri.status(cid)).state == api.CONTAINER_EXITED
    await expect_code(reopen(cri, cid), grpc.StatusCode.UNKNOWN)
    created = await cri.create(sid, cfg, name="created")
    await expect_code(reopen(cri, created), grpc.StatusCode.UNKNOWN)


async def test_reopen_of_unknown_or_empty_id(cri: CriHarness) -> None:
    await start(cri, ["--log-rate=1"])
    await expect_code(reopen(cri, "e" * 64), grpc.StatusCode.NOT_FOUND)
    await expect_code(reopen(cri, ""), grpc.StatusCode.INVALID_ARGUMENT)


# -- log paths that try to escape ---------------------------------------------------------------------


@pytest.mark.parametrize("log_path", ["../../escape.log", "c/../../../escape.log", "..", "ABSOLUTE"])
async def test_create_with_a_log_path_outside_the_log_directory_is_invalid(cri: CriHarness, log_path: str) -> None:
    if log_path == "ABSOLUTE":
        log_path = str(cri.root / "escape.log")
    cfg = cri.sandbox_config()
    sid = await cri.run_sandbox(cfg)
    await cri.pull(HELPER_IMAGE)
    before = all_files(cri.root)
    config = api.ContainerConfig(
        metadata=api.ContainerMetadata(name="c"),
        image=api.ImageSpec(image=HELPER_IMAGE),
        args=["--log-rate=1"],
        log_path=log_path,
    )
    err = await expect_code(
        cri.runtime.CreateContainer(api.CreateContainerRequest(pod_sandbox_id=sid, config=config, sandbox_config=cfg)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "log_path" in (err.details() or "")
    assert (await cri.runtime.ListContainers(api.ListContainersRequest())).containers == []
    await cri.clock.advance(5)
    written = all_files(cri.root) - before
    assert not [p for p in written if p.name.endswith(".log")]
    assert cri.root / "escape.log" not in written
    # the name is not held by the rejected request: a proper one succeeds
    cid = await cri.create(sid, cfg, args=["--log-rate=1"])
    await cri.start_container(cid)
    await cri.clock.advance(0.5)
    assert len(read_lines(Path(cfg.log_directory) / "c" / "0.log")) == 1


@pytest.mark.parametrize("log_directory", ["relative/pods", "/var/log/pods/../../../etc"])
async def test_run_sandbox_with_an_unsafe_log_directory_is_invalid(cri: CriHarness, log_directory: str) -> None:
    cfg = cri.sandbox_config()
    cfg.log_directory = log_directory
    err = await expect_code(
        cri.runtime.RunPodSandbox(api.RunPodSandboxRequest(config=cfg)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "log_directory" in (err.details() or "")
    assert (await cri.runtime.ListPodSandbox(api.ListPodSandboxRequest())).items == []


async def test_log_paths_of_two_containers_do_not_mix(cri: CriHarness) -> None:
    cfg = cri.sandbox_config()
    sid = await cri.run_sandbox(cfg)
    await cri.pull(HELPER_IMAGE)
    a = await cri.create(sid, cfg, name="a", args=["--log-rate=1", "--log-text=from-a"])
    b = await cri.create(sid, cfg, name="b", args=["--log-rate=1", "--log-text=from-b"])
    await cri.start_container(a)
    await cri.clock.advance(0.5)
    await cri.start_container(b)
    started_a, started_b = (await cri.status(a)).started_at, (await cri.status(b)).started_at
    await cri.clock.advance(1)
    logs = Path(cfg.log_directory)
    assert read_lines(logs / "a" / "0.log") == expected(started_a, range(1, 3), NS, text="from-a")
    assert read_lines(logs / "b" / "0.log") == expected(started_b, range(1, 3), NS, text="from-b")
