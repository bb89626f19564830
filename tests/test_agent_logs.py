"""The container log manager's rules and its pass, on files in tmp_path, a VirtualClock and a scripted runtime.

The scripted runtime answers the three CRI calls the manager makes: ListContainers, ContainerStatus (the log
path) and ReopenContainerLog, which, as a runtime does, opens a fresh file at the log path and makes the
container's writer use it (the old file, renamed, keeps what was written before). Failures are real
``grpc.aio.AioRpcError``s with the codes a runtime answers. The same manager runs through the agent against
the CRI emulator in tests/test_agent_logs_e2e.py.
"""

from __future__ import annotations

import asyncio
import errno
import gzip
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeharness.agent.logs import ContainerLogManager, LogRotatePolicy, files
from kubeharness.agent.logs.manager import _compress_in_thread
from kubeharness.agent.logs.rotation import all_logs, needs_rotation, plan_rotation, rotated_name, split_unused
from kubeharness.clock import NS_PER_SECOND, VirtualClock
from kubeharness.errors import InvalidArgument
from kubeharness.wire.cri import api_pb2 as api

START = "20260101-000000"  # the VirtualClock's default start, 2026-01-01T00:00:00Z


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, None)


@dataclass
class Ctr:
    """One scripted container: its log path, its state, and the file its output goes to (an open fd)."""

    id: str
    log: Path
    state: api.ContainerState = api.ContainerState.CONTAINER_RUNNING
    fd: int | None = None
    written: int = 0

    def open(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
        self.fd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)

    def write(self, lines: int, size: int = 100) -> None:
        """Write ``lines`` CRI lines of about ``size`` bytes each (numbered on from the last one)."""
        assert self.fd is not None
        chunk = b""
        for _ in range(lines):
            self.written += 1
            text = f"line {self.written} ".ljust(size - 41, "x")  # 40 bytes before it, a newline after
            chunk += f"2026-01-01T00:00:00.000000000Z stdout F {text}\n".encode()
        os.write(self.fd, chunk)


@dataclass
class Runtime:
    """A scripted CRI runtime: what the manager asked, and the failures it is told to answer with."""

    containers: dict[str, Ctr] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    reopen_errors: list[grpc.StatusCode] = field(default_factory=list)
    list_errors: list[grpc.StatusCode] = field(default_factory=list)
    status_gone: set[str] = field(default_factory=set)
    in_flight: int = 0
    most_in_flight: int = 0

    def add(self, tmp: Path, cid: str, *, state: api.ContainerState = api.ContainerState.CONTAINER_RUNNING) -> Ctr:
        (tmp / cid).mkdir(parents=True, exist_ok=True)
        c = self.containers[cid] = Ctr(cid, tmp / cid / "0.log", state)
        c.open()
        return c

    async def list_containers(self) -> list[api.Container]:
        self.calls.append(("list", ""))
        if self.list_errors:
            raise rpc_error(self.list_errors.pop(0), "runtime away")
        return [api.Container(id=c.id, state=c.state) for c in self.containers.values()]

    async def container_status(self, container_id: str) -> api.ContainerStatus:
        self.calls.append(("status", container_id))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            for _ in range(3):
                await asyncio.sleep(0)  # let the other workers in, as a real call would
        finally:
            self.in_flight -= 1
        if container_id in self.status_gone:
            raise rpc_error(grpc.StatusCode.NOT_FOUND, f"container {container_id} not found")
        c = self.containers[container_id]
        return api.ContainerStatus(id=c.id, state=c.state, log_path=str(c.log))

    async def reopen_container_log(self, container_id: str) -> None:
        self.calls.append(("reopen", container_id))
        if self.reopen_errors:
            raise rpc_error(self.reopen_errors.pop(0), "container is not running")
        self.containers[container_id].open()


def manager(runtime: Runtime, clock: VirtualClock, max_size: int = 1000, max_files: int = 3,
            workers: int = 1) -> ContainerLogManager:
    return ContainerLogManager(runtime, clock, LogRotatePolicy(max_size, max_files), max_workers=workers,
                               monitor_interval_s=10)


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def line_numbers(data: bytes) -> list[int]:
    """The numbers of CRI lines ``<time> <stream> F line <n> ...``."""
    return [int(line.split(b" ")[4]) for line in data.splitlines()]


def all_lines(directory: Path) -> list[int]:
    """The line numbers in 0.log's files, oldest file first (kubelet's GetAllLogs order)."""
    found: list[int] = []
    for name in all_logs(str(directory / "0.log"), files.siblings(str(directory / "0.log"))):
        data = Path(name).read_bytes()
        found.extend(line_numbers(gzip.decompress(data) if name.endswith(".gz") else data))
    return found


async def tick(clock: VirtualClock, seconds: int) -> None:
    """Move the clock a second at a time, letting the woken pass finish its calls before the next second."""
    for _ in range(20):
        await asyncio.sleep(0)
    for _ in range(seconds):
        await clock.advance(1)
        for _ in range(20):
            await asyncio.sleep(0)


# -- the rules, pure -------------------------------------------------------------------------------------


def test_rotated_names_are_the_utc_time_of_the_rotation() -> None:
    assert rotated_name("/p/0.log", 1_767_225_600 * NS_PER_SECOND) == f"/p/0.log.{START}"
    assert rotated_name("/p/0.log", (1_767_225_600 + 86_400 + 3661) * NS_PER_SECOND + 999_999_999) == \
        "/p/0.log.20260102-010101"
    assert rotated_name("/p/0.log", 951_782_400 * NS_PER_SECOND) == "/p/0.log.20000229-000000"  # a leap day


def test_a_log_is_rotated_at_or_over_its_size_and_never_when_the_size_is_negative() -> None:
    policy = LogRotatePolicy(max_size_bytes=100, max_files=2)
    assert [needs_rotation(s, policy) for s in (0, 99, 100, 101)] == [False, False, True, True]
    assert needs_rotation(0, LogRotatePolicy(0, 2))  # 0: every pass rotates, as kubelet does
    off = LogRotatePolicy(-1, 2)
    assert not off.enabled and not needs_rotation(10**12, off)


def test_max_files_under_two_is_refused_with_kubelets_message() -> None:
    with pytest.raises(InvalidArgument, match=r"invalid MaxFiles 1, must be > 1"):
        LogRotatePolicy(100, 1)


def test_leftovers_are_unused_and_the_rest_is_planned_oldest_first() -> None:
    siblings = ["0.log.20260101-000300", "0.log.20260101-000100.gz", "0.log.20260101-000200.tmp",
                "0.log.20260101-000200", "0.log.20260101-000200.gz", "0.log.20260101-000000.gz"]
    plan = plan_rotation(siblings, LogRotatePolicy(100, 4))  # keeps maxFiles-2 = 2 rotated files
    assert plan.unused == ("0.log.20260101-000200.tmp", "0.log.20260101-000200")  # the tmp; the one with a .gz
    assert plan.excess == ("0.log.20260101-000000.gz", "0.log.20260101-000100.gz")
    assert plan.kept == ("0.log.20260101-000200.gz", "0.log.20260101-000300")
    assert plan.compress == ("0.log.20260101-000300",)
    assert all_logs("0.log", siblings) == ["0.log.20260101-000000.gz", "0.log.20260101-000100.gz",
                                           "0.log.20260101-000200.gz", "0.log.20260101-000300", "0.log"]


def test_fewer_files_than_the_limit_are_all_kept() -> None:
    # kubelet's loop removes len(logs) - (maxFiles-2) files: none when that is negative (not a slice from the end)
    two = ["0.log.20260101-000100", "0.log.20260101-000000.gz"]
    plan = plan_rotation(two, LogRotatePolicy(100, 5))
    assert (plan.excess, plan.kept) == ((), ("0.log.20260101-000000.gz", "0.log.20260101-000100"))
    assert plan.compress == ("0.log.20260101-000100",)
    plan = plan_rotation(["0.log.20260101-000000.gz", "0.log.20260101-000100"], LogRotatePolicy(100, 2))
    assert plan.excess == ("0.log.20260101-000000.gz", "0.log.20260101-000100") and plan.kept == ()


stamps = st.integers(0, 10**6).map(lambda s: rotated_name("0.log", (1_767_225_600 + s) * NS_PER_SECOND))


@given(st.sets(stamps, max_size=12), st.data(), st.integers(2, 8))
def test_a_plan_accounts_for_every_sibling(rotated: set[str], data: st.DataObject, max_files: int) -> None:
    siblings: list[str] = []
    for name in sorted(rotated):
        kind = data.draw(st.sampled_from(["plain", "gz", "both", "tmp", "gz+tmp"]))
        siblings += {"plain": [name], "gz": [name + ".gz"], "both": [name, name + ".gz"], "tmp": [name + ".tmp"],
                     "gz+tmp": [name + ".gz", name + ".tmp"]}[kind]
    shuffled = data.draw(st.permutations(siblings))
    plan = plan_rotation(shuffled, LogRotatePolicy(100, max_files))
    every = [*plan.unused, *plan.excess, *plan.kept]
    assert sorted(every) == sorted(siblings)  # each sibling in exactly one group
    assert set(plan.unused) == {n for n in siblings if n.endswith(".tmp") or n + ".gz" in siblings}
    inuse = sorted(set(siblings) - set(plan.unused))
    assert list(plan.kept) == inuse[max(len(inuse) - (max_files - 2), 0):]  # the newest maxFiles-2
    assert list(plan.excess) == inuse[:len(inuse) - len(plan.kept)]  # the oldest, oldest first
    assert set(plan.compress) == {n for n in plan.kept if not n.endswith(".gz")}
    assert split_unused(shuffled)[1] == [n for n in shuffled if n in plan.unused]


# -- compression through .tmp ---------------------------------------------------------------------------


def test_compression_goes_through_a_tmp_file_and_a_rename(tmp_path: Path) -> None:
    log = tmp_path / f"0.log.{START}"
    content = b"".join(f"2026-01-01T00:00:00.000000000Z stdout F line {i}\n".encode() for i in range(5000))
    log.write_bytes(content)
    os.chmod(log, 0o640)
    (tmp_path / f"0.log.{START}.tmp").write_bytes(b"a stale half-written tmp")
    assert files.compress(str(log)) == f"{log}.gz"
    assert names(tmp_path) == [f"0.log.{START}.gz"]
    gz = tmp_path / f"0.log.{START}.gz"
    assert gzip.decompress(gz.read_bytes()) == content
    assert stat.S_IMODE(gz.stat().st_mode) == 0o640  # the source's mode, as kubelet's OpenFile(..., logInfo.Mode())
    assert gz.read_bytes()[4:8] == b"\0\0\0\0"  # no mtime in the header (nor a name): the same bytes every time


def test_a_failed_compression_leaves_the_source_and_no_tmp(tmp_path: Path) -> None:
    log = tmp_path / f"0.log.{START}"
    log.write_bytes(b"x\n")
    (tmp_path / f"0.log.{START}.gz").mkdir()  # the rename of .tmp to .gz cannot replace a directory
    with pytest.raises(OSError):
        files.compress(str(log))
    assert names(tmp_path) == [f"0.log.{START}", f"0.log.{START}.gz"]
    assert log.read_bytes() == b"x\n"


# -- the pass -------------------------------------------------------------------------------------------


async def test_below_the_size_nothing_happens_and_at_the_size_the_log_is_rotated(tmp_path: Path) -> None:
    clock, rt = VirtualClock(), Runtime()
    c = rt.add(tmp_path, "c1")
    m = manager(rt, clock, max_size=1000)
    c.write(9)  # 900 bytes
    await m.rotate_once()
    assert names(tmp_path / "c1") == ["0.log"] and ("reopen", "c1") not in rt.calls
    c.write(1)  # exactly 1000 bytes
    assert c.log.stat().st_size == 1000
    await m.rotate_once()
    assert names(tmp_path / "c1") == ["0.log", f"0.log.{START}"]
    assert rt.calls[-1] == ("reopen", "c1") and c.log.stat().st_size == 0
    c.write(11)  # over the size
    await clock.advance(10)
    await m.rotate_once()
    assert names(tmp_path / "c1") == ["0.log", f"0.log.{START}.gz", "0.log.20260101-000010"]
    assert all_lines(tmp_path / "c1") == list(range(1, 22))


async def test_rotations_keep_max_files_removing_the_oldest_and_compressing_all_but_the_newest(
        tmp_path: Path) -> None:
    clock, rt = VirtualClock(), Runtime()
    c = rt.add(tmp_path, "c1")
    m = manager(rt, clock, max_size=1000, max_files=4)
    stamps_seen = []
    for n in range(1, 7):
        c.write(10)
        await m.rotate_once()
        stamps_seen.append(rotated_name("0.log", clock.now_ns())[len("0.log."):])
        await clock.advance(3)
        listing = names(tmp_path / "c1")
        assert len(listing) == min(n + 1, 4)  # never more than maxFiles, the live one included
    newest = stamps_seen[-1]
    assert names(tmp_path / "c1") == ["0.log", f"0.log.{stamps_seen[-3]}.gz", f"0.log.{stamps_seen[-2]}.gz",
                                      f"0.log.{newest}"]
    assert all_lines(tmp_path / "c1") == list(range(31, 61))  # the three newest rotations' lines, in order
    assert stamps_seen[0] == START and stamps_seen[-1] == "20260101-000015"


async def test_leftovers_of_an_interrupted_rotation_are_removed(tmp_path: Path) -> None:
    clock, rt = VirtualClock(), Runtime()
    c = rt.add(tmp_path, "c1")
    d = tmp_path / "c1"
    for name in ("0.log.20251231-000000.tmp", "0.log.20251231-000100", "0.log.20251231-000100.gz",
                 "0.log.20251231-000200"):
        (d / name).write_bytes(b"2026-01-01T00:00:00.000000000Z stdout F line 0\n")
    c.write(10)
    await manager(rt, clock, max_size=1000, max_files=5).rotate_once()
    # the tmp and the uncompressed file that has its .gz are gone; the older rotated file is compressed
    assert names(d) == ["0.log", "0.log.20251231-000100.gz", "0.log.20251231-000200.gz", f"0.log.{START}"]


async def test_a_failed_reopen_renames_the_log_back_and_the_next_pass_rotates_it(tmp_path: Path) -> None:
    clock, rt = VirtualClock(), Runtime()
    c = rt.add(tmp_path, "c1")
    m = manager(rt, clock, max_size=1000)
    c.write(12)
    rt.reopen_errors = [grpc.StatusCode.UNKNOWN]
    await m.rotate_once()
    assert names(tmp_path / "c1") == ["0.log"]  # renamed back: the writer's file has its name again
    c.write(1)  # still the same file (the writer never reopened)
    assert all_lines(tmp_path / "c1") == list(range(1, 14))
    await clock.advance(10)
    await m.rotate_once()
    assert names(tmp_path / "c1") == ["0.log", "0.log.20260101-000010"]
    c.write(2)
    assert all_lines(tmp_path / "c1") == list(range(1, 16))


async def test_a_missing_log_is_reopened(tmp_path: Path) -> None:
    clock, rt = VirtualClock(), Runtime()
    c = rt.add(tmp_path, "c1")
    c.log.unlink()
    await manager(rt, clock).rotate_once()
    assert rt.calls == [("list", ""), ("status", "c1"), ("reopen", "c1")]
    assert names(tmp_path / "c1") == ["0.log"]
    c.write(1)
    assert c.log.stat().st_size > 0  # the writer writes to the new file


async def test_a_missing_log_that_cannot_be_reopened_is_logged_and_the_pass_goes_on(tmp_path: Path) -> None:
    clock, rt = VirtualClock(), Runtime()
    rt.add(tmp_path, "c1").log.unlink()
    c2 = rt.add(tmp_path, "c2")
    c2.write(10)
    rt.reopen_errors = [grpc.StatusCode.UNKNOWN]  # the first reopen: c1's
    await manager(rt, clock).rotate_once()
    assert names(tmp_path / "c1") == [] and names(tmp_path / "c2") == ["0.log", f"0.log.{START}"]


async def test_only_running_containers_are_rotated_and_a_gone_one_does_not_stop_the_pass(tmp_path: Path) -> None:
    clock, rt = VirtualClock(), Runtime()
    for cid, state in (("a", api.ContainerState.CONTAINER_EXITED), ("b", api.ContainerState.CONTAINER_RUNNING),
                       ("c", api.ContainerState.CONTAINER_CREATED), ("d", api.ContainerState.CONTAINER_RUNNING)):
        rt.add(tmp_path, cid, state=state).write(20)
    rt.status_gone = {"b"}
    await manager(rt, clock).rotate_once()
    assert [call for call in rt.calls if call[0] == "status"] == [("status", "b"), ("status", "d")]
    assert [names(tmp_path / cid) for cid in "abcd"] == [["0.log"], ["0.log"], ["0.log"], ["0.log", f"0.log.{START}"]]


async def test_a_negative_size_turns_rotation_off(tmp_path: Path) -> None:
    clock, rt = VirtualClock(), Runtime()
    rt.add(tmp_path, "c1").write(100)
    m = manager(rt, clock, max_size=-1)
    await m.rotate_once()
    await asyncio.wait_for(m.run(), 5)  # returns at once: no loop at all
    await m.clean("c1")  # kubelet's stub manager: Clean does nothing either
    assert rt.calls == [] and names(tmp_path / "c1") == ["0.log"]


@pytest.mark.parametrize("workers", [1, 2, 3])
async def test_at_most_max_workers_containers_at_a_time(tmp_path: Path, workers: int) -> None:
    clock, rt = VirtualClock(), Runtime()
    for i in range(7):
        rt.add(tmp_path, f"c{i}").write(10)
    await manager(rt, clock, workers=workers).rotate_once()
    assert rt.most_in_flight == workers
    assert all(names(tmp_path / f"c{i}") == ["0.log", f"0.log.{START}"] for i in range(7))


async def test_the_loop_runs_a_pass_at_once_then_every_interval_and_survives_a_failed_list(tmp_path: Path) -> None:
    clock, rt = VirtualClock(), Runtime()
    c = rt.add(tmp_path, "c1")
    rt.list_errors = [grpc.StatusCode.UNAVAILABLE]
    task = asyncio.ensure_future(manager(rt, clock, max_size=1000).run())
    try:
        await tick(clock, 0)
        assert rt.calls == [("list", "")]  # the first pass at once (it failed: runtime away)
        c.write(10)
        await tick(clock, 9)
        assert rt.calls == [("list", "")]
        await tick(clock, 1)
        assert names(tmp_path / "c1") == ["0.log", "0.log.20260101-000010"]
        await tick(clock, 30)
        assert [call for call in rt.calls if call[0] == "list"] == [("list", "")] * 5
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_clean_removes_every_log_file_of_the_container_and_nothing_else(tmp_path: Path) -> None:
    clock, rt = VirtualClock(), Runtime()
    c = rt.add(tmp_path, "c1")
    m = manager(rt, clock, max_size=100, max_files=3)
    for _ in range(3):
        c.write(2)
        await m.rotate_once()
        await clock.advance(3)
    (tmp_path / "c1" / "1.log").write_bytes(b"the next instance's log\n")
    assert len(names(tmp_path / "c1")) == 4
    await m.clean("c1")
    assert names(tmp_path / "c1") == ["1.log"]
    rt.status_gone = {"c1"}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await m.clean("c1")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def open_writer(fifo: Path, limit_s: float = 30) -> int:
    """The FIFO's write end, once someone reads it (real time: a worker thread opens it)."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as err:
            if err.errno != errno.ENXIO:
                raise
        assert time.monotonic() < deadline, "nobody reads the file: the compression never ran"
        await asyncio.sleep(0.01)


async def test_a_cancelled_pass_lets_a_compression_under_way_finish(tmp_path: Path) -> None:
    rotated = tmp_path / f"0.log.{START}"
    os.mkfifo(rotated)  # the worker thread blocks reading it until the test writes: cancelled while it runs
    job = asyncio.ensure_future(_compress_in_thread(str(rotated)))
    await asyncio.sleep(0)
    job.cancel()
    writer = await open_writer(rotated)
    try:
        assert not job.done()  # the cancelled pass waits for its thread
        os.write(writer, b"2026-01-01T00:00:00.000000000Z stdout F line 1\n")
    finally:
        os.close(writer)
    with pytest.raises(asyncio.CancelledError):
        await job
    assert names(tmp_path) == [f"0.log.{START}.gz"]  # complete: no .tmp, no source
    assert line_numbers(gzip.decompress((tmp_path / f"0.log.{START}.gz").read_bytes())) == [1]
