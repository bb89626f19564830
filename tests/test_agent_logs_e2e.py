"""Container log rotation through the agent on the CRI emulator's virtual clock.

Containers log with ``khelper --log-rate=N --log-line-bytes=M --log-count=C``; the agent runs with a small
``containerLogMaxSize``. Afterwards the log directory holds exactly what kubelet leaves (the live file, one
uncompressed rotated file, the older ones gzipped, at most ``containerLogMaxFiles`` in all), and the CRI
lines (``<time> <stream> <F|P> <text>``) across the live, rotated and gunzipped files number each line once,
in order, with none missing: every line that is not in a file removed as the oldest beyond the limit.
"""

from __future__ import annotations

import asyncio
import calendar
import gzip
import re
import time
from pathlib import Path
from typing import Any

from kubeharness.agent.logs import files
from kubeharness.agent.logs.rotation import TIMESTAMP_FORMAT, all_logs
from kubeharness.clock import VirtualClock
from kubeharness.faults import FaultEngine
from kubeharness.faults.plan import load_plan
from tests.test_agent_e2e import Node, helper, phase, pod, start_node, stop_node

ROTATED = re.compile(r"^0\.log\.(\d{8}-\d{6})(\.gz)?$")


def kubelet(max_size: str, max_files: int, workers: int = 1) -> dict[str, Any]:
    return {"containerLogMaxSize": max_size, "containerLogMaxFiles": max_files, "containerLogMaxWorkers": workers,
            "containerLogMonitorInterval": "3s"}


def log_dir(node: Node, pod_name: str, ctr: str) -> Path:
    found = list((node.root / "pods").glob(f"default_{pod_name}-*/{ctr}"))
    assert len(found) == 1, found
    return found[0]


def lines(directory: Path) -> list[int]:
    """The line numbers across 0.log's files, oldest file first; each CRI line parsed strictly."""
    numbers: list[int] = []
    live = str(directory / "0.log")
    for name in all_logs(live, files.siblings(live)):
        data = Path(name).read_bytes()
        for raw in (gzip.decompress(data) if name.endswith(".gz") else data).splitlines():
            stamp, stream, tag, text = raw.decode().split(" ", 3)
            assert stamp.endswith("Z") and stream in ("stdout", "stderr") and tag == "F", raw[:80]
            word, number, *_ = text.split(" ")
            assert word == "line"
            numbers.append(int(number))
    return numbers


def shape(directory: Path) -> tuple[list[str], list[str]]:
    """The rotated files (uncompressed, gzipped), each list oldest first; fails on any other file."""
    plain: list[str] = []
    gz: list[str] = []
    for p in sorted(directory.iterdir()):
        if p.name == "0.log":
            continue
        m = ROTATED.match(p.name)
        assert m, f"unexpected file {p.name}"
        (gz if m.group(2) else plain).append(p.name)
    return plain, gz


def stamp_ns(name: str) -> int:
    found = ROTATED.match(name)
    assert found
    return calendar.timegm(time.strptime(found.group(1), TIMESTAMP_FORMAT)) * 10**9


async def run_until_logged(node: Node, name: str, counts: dict[str, int], extra_s: float = 12) -> None:
    """Advance until each container's last line (``counts``) is in its live file, then ``extra_s`` more."""
    await node.until(lambda p: phase(p, name) == "Running")
    started = node.clock.now_ns()
    while True:
        dirs = {ctr: log_dir(node, name, ctr) for ctr in counts} if all(
            list((node.root / "pods").glob(f"default_{name}-*/{ctr}")) for ctr in counts) else {}
        if dirs and all(last_line(d) == counts[ctr] for ctr, d in dirs.items()):
            break
        assert (node.clock.now_ns() - started) / 1e9 < max(counts.values()) / 50 + 60, "the lines were not all written"
        await node.advance(3, step_s=1.0)
    await node.advance(extra_s, step_s=1.0)  # passes after the last line: a last rotation, then none
    await idle(node)


async def idle(node: Node) -> None:
    """Wait (real time) for a log rotation pass under way to finish: its runtime calls are real I/O."""
    deadline = time.monotonic() + 30
    while node.agent.logs.busy:
        assert time.monotonic() < deadline, "a log rotation pass did not finish"
        await asyncio.sleep(0.01)


def last_line(directory: Path) -> int | None:
    """The number of the last line written (in the live file, or in the rotated one when the live file is new);
    None while there is none, or while a file is between its rename and the runtime's reopen (or between
    its compression and its removal): a pass is under way while the test looks."""
    try:
        found = lines(directory)
    except FileNotFoundError:
        return None
    return found[-1] if found else None


async def test_rotation_leaves_kubelets_files_and_every_remaining_line_once(tmp_path: Path) -> None:
    node = await start_node(tmp_path, kubelet=kubelet("64Ki", 3))
    try:
        start = node.clock.now_ns()
        # 100 lines/s of 200 bytes (about 24 KiB/s of CRI lines) for two virtual minutes: a rotation every 3-s pass
        node.write("chatty", pod("chatty", helper("app", "--log-rate=100", "--log-line-bytes=200",
                                                  "--log-count=12000")))
        await node.until(lambda p: phase(p, "chatty") == "Running")
        d = log_dir(node, "chatty", "app")
        most = 0
        for _ in range(40):  # while it logs: never more than maxFiles files in use
            await node.advance(3, step_s=1.0)
            await idle(node)
            in_use = all_logs(str(d / "0.log"), files.siblings(str(d / "0.log")))
            most = max(most, len(in_use))
            assert len(in_use) <= 3, in_use
        assert most == 3
        await run_until_logged(node, "chatty", {"app": 12000})
        plain, gz = shape(d)
        assert len(plain) == 1 and len(gz) == 1, (plain, gz)  # live + one rotated + one .gz = maxFiles
        assert stamp_ns(gz[0]) < stamp_ns(plain[0]) <= node.clock.now_ns()
        assert stamp_ns(gz[0]) >= start - 10**9  # the agent's (virtual) clock names them
        found = lines(d)
        assert found == list(range(found[0], 12001)), "a line is missing or repeated"
        assert found[0] > 1  # the oldest files were removed
        assert (d / "0.log").stat().st_size < 64 * 1024
    finally:
        await stop_node(node)


async def test_with_room_for_every_file_no_line_is_lost_two_containers_two_workers(tmp_path: Path) -> None:
    node = await start_node(tmp_path, kubelet=kubelet("64Ki", 50, workers=2))
    try:
        node.write("pair", pod("pair", helper("a", "--log-rate=150", "--log-line-bytes=120", "--log-count=6000"),
                               helper("b", "--log-rate=50", "--log-line-bytes=400", "--log-count=2000",
                                      "--log-stream=both")))
        await run_until_logged(node, "pair", {"a": 6000, "b": 2000})
        for ctr, count in (("a", 6000), ("b", 2000)):
            d = log_dir(node, "pair", ctr)
            plain, gz = shape(d)
            assert len(plain) == 1 and len(gz) >= 5, (ctr, plain, gz)
            assert lines(d) == list(range(1, count + 1)), ctr
    finally:
        await stop_node(node)


async def test_a_negative_max_size_turns_rotation_off(tmp_path: Path) -> None:
    node = await start_node(tmp_path, kubelet=kubelet("-1", 2))
    try:
        node.write("quiet", pod("quiet", helper("app", "--log-rate=100", "--log-line-bytes=200", "--log-count=1500")))
        await run_until_logged(node, "quiet", {"app": 1500}, extra_s=6)
        d = log_dir(node, "quiet", "app")
        assert sorted(p.name for p in d.iterdir()) == ["0.log"]
        assert (d / "0.log").stat().st_size > 5 * 64 * 1024
        assert lines(d) == list(range(1, 1501))
    finally:
        await stop_node(node)


async def test_failed_reopens_rename_the_log_back_and_lose_no_line(tmp_path: Path) -> None:
    clock = VirtualClock()
    plan = load_plan("""
rules:
  - {name: no-reopen, where: cri, method: ReopenContainerLog, action: {error: {code: UNKNOWN}}, when: {first: 3}}
""")
    engine = FaultEngine(plan, clock)
    node = await start_node(tmp_path, clock, kubelet=kubelet("64Ki", 20), faults=engine)
    try:
        node.write("stubborn", pod("stubborn", helper("app", "--log-rate=100", "--log-line-bytes=200",
                                                      "--log-count=4000")))
        await node.until(lambda p: phase(p, "stubborn") == "Running")
        d = log_dir(node, "stubborn", "app")
        await node.advance(9, step_s=1.0)  # three passes over the size, each reopen refused: renamed back
        await idle(node)
        assert sorted(p.name for p in d.iterdir()) == ["0.log"]
        assert (d / "0.log").stat().st_size > 2 * 64 * 1024
        await run_until_logged(node, "stubborn", {"app": 4000})
        plain, gz = shape(d)
        assert len(plain) == 1 and len(gz) >= 2, (plain, gz)
        assert lines(d) == list(range(1, 4001))
    finally:
        await stop_node(node)
