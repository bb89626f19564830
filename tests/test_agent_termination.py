"""Termination messages, unit by unit: the file the agent creates and mounts, the message an exited container's
status gets from that file or from its log's tail (kubelet's limits: 4096 bytes of the file, 80 lines and
2048 bytes of the log), the CRI log decoding (``P`` chunks joined), the pod-wide 12 KiB cap, and the
terminationMessagePolicy annotation kubelet reads it back from."""

from __future__ import annotations

import io
import os
import random
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeharness.agent.pod import labels
from kubeharness.agent.pod.model import TERMINATION_MESSAGE_FALLBACK, TERMINATION_MESSAGE_FILE, Container, Pod, PodSpec
from kubeharness.agent.runtime import termination
from kubeharness.emulators.cri.logs import encode_line
from kubeharness.wire.cri import api_pb2 as api
from kubeharness.wire.cri import api_pb2_grpc as api_grpc
from tests import test_agent_e2e as e2e

T0 = 1_767_225_600 * 1_000_000_000
MOUNT_AT = "/dev/termination-log"


def log_lines(*texts: str, stream: str = "stdout") -> bytes:
    return b"".join(encode_line(T0 + i, stream, t.encode()) for i, t in enumerate(texts))


def exited(tmp_path: Path, *, file: bytes | None = b"", log: bytes | None = b"", exit_code: int = 1,
           policy: str = TERMINATION_MESSAGE_FILE, reason: str = "Error", message: str = "",
           path: str = MOUNT_AT, state: int = api.CONTAINER_EXITED) -> api.ContainerStatus:
    """An exited container's status as the runtime reports it, with its message file and log in tmp_path."""
    host = tmp_path / "msgfile"
    if file is not None:
        host.write_bytes(file)
    log_path = tmp_path / "0.log"
    if log is not None:
        log_path.write_bytes(log)
    notes = {labels.CONTAINER_TERMINATION_MESSAGE_PATH: path, labels.CONTAINER_TERMINATION_MESSAGE_POLICY: policy}
    return api.ContainerStatus(id="c1", state=state, exit_code=exit_code, reason=reason, message=message,  # type: ignore[arg-type]
                               annotations=notes, log_path=str(log_path),
                               mounts=[api.Mount(container_path=MOUNT_AT, host_path=str(host))])


FALLBACK = TERMINATION_MESSAGE_FALLBACK
BIG_LOG = log_lines(*(f"line {n}" for n in range(1, 101)))  # 100 lines
WIDE_LOG = log_lines(*(f"{n:03d}" + "x" * 96 for n in range(1, 31)))  # 30 lines of 100 bytes: 3000 bytes
SPLIT_LOG = log_lines("a" * 20000, "tail")  # 16 KiB P chunk + F chunk, then a line


@pytest.mark.parametrize(("case", "kwargs", "want"), [
    ("the file", dict(file=b"bye\n", exit_code=0), "bye\n"),
    ("the file, exit 1", dict(file=b"bye", exit_code=1), "bye"),
    ("the last 4096 bytes of a big file", dict(file=b"a" * 100 + b"b" * 4096), "b" * 4096),
    ("an empty file under File", dict(file=b"", log=log_lines("oops")), ""),
    ("an empty file, Fallback, failed: the log", dict(file=b"", log=log_lines("oops", "boom"), policy=FALLBACK),
     "oops\nboom\n"),
    ("an empty file, Fallback, succeeded: nothing", dict(file=b"", log=log_lines("fine"), policy=FALLBACK,
                                                         exit_code=0), ""),
    ("a written file wins over the log", dict(file=b"mine", log=log_lines("oops"), policy=FALLBACK), "mine"),
    ("a missing file, Fallback: the log", dict(file=None, log=log_lines("oops"), policy=FALLBACK), "oops\n"),
    ("a missing file under File", dict(file=None, log=log_lines("oops")), ""),
    ("no path annotated, Fallback: the log", dict(path="", log=log_lines("oops"), policy=FALLBACK), "oops\n"),
    ("a path no mount has, Fallback", dict(path="/other", log=log_lines("oops"), policy=FALLBACK), "oops\n"),
    ("ContainerCannotRun never reads logs", dict(reason="ContainerCannotRun", log=log_lines("x"),
                                                 policy=FALLBACK, exit_code=128), ""),
    ("the last 80 lines of a long log", dict(log=BIG_LOG, policy=FALLBACK),
     "".join(f"line {n}\n" for n in range(21, 101))),
    ("the last 2048 bytes of a wide log", dict(log=WIDE_LOG, policy=FALLBACK),
     "".join(f"{n:03d}" + "x" * 96 + "\n" for n in range(1, 31))[-2048:]),
    ("P chunks joined", dict(log=SPLIT_LOG, policy=FALLBACK), ("a" * 20000 + "\ntail\n")[-2048:]),
    ("stderr too", dict(log=log_lines("out") + log_lines("err", stream="stderr"), policy=FALLBACK), "out\nerr\n"),
    ("the runtime's message first", dict(file=b"mine", message="runtime says"), "runtime says: mine"),
    ("only the runtime's message", dict(file=b"", message="runtime says"), "runtime says"),
    ("a running container keeps its message", dict(file=b"mine", state=api.CONTAINER_RUNNING, message="m"), "m"),
])
def test_the_message_of_an_exited_container(tmp_path: Path, case: str, kwargs: dict[str, object], want: str) -> None:
    assert termination.status_message(exited(tmp_path, **kwargs)) == want, case  # type: ignore[arg-type]


def test_a_missing_log_under_fallback_is_kubelets_error_text(tmp_path: Path) -> None:
    status = exited(tmp_path, log=None, policy=FALLBACK)
    message = termination.status_message(status)
    assert message == (f'Error on reading termination message from logs: failed to try resolving symlinks in path '
                       f'"{status.log_path}": lstat {status.log_path}: no such file or directory')


def test_an_unreadable_message_file_is_reported(tmp_path: Path) -> None:
    status = exited(tmp_path, file=None)
    (tmp_path / "msgfile").mkdir()
    assert termination.status_message(status) == (
        f"Error on reading termination log {tmp_path / 'msgfile'}: read {tmp_path / 'msgfile'}: is a directory")


def test_the_file_is_made_under_the_pod_directory_with_kubelets_modes(tmp_path: Path) -> None:
    old = os.umask(0o077)  # kubelet chmods the file: the umask must not matter
    try:
        mount = termination.message_mount(str(tmp_path), "uid-1", Container("app", "img"), random.Random(7))
    finally:
        os.umask(old)
    assert mount is not None and mount.container_path == "/dev/termination-log"
    host = Path(mount.host_path)
    assert host.parent == tmp_path / "pods" / "uid-1" / "containers" / "app"
    assert len(host.name) == 8 and int(host.name, 16) >= 0
    assert stat.S_IMODE(host.stat().st_mode) == 0o666 and host.read_bytes() == b""
    assert stat.S_IMODE(host.parent.stat().st_mode) == 0o700  # 0750 under the test's umask of 077
    other = termination.message_mount(str(tmp_path), "uid-1", Container("app", "img"), random.Random(8))
    assert other is not None and other.host_path != mount.host_path  # one file per instance
    custom = termination.message_mount(str(tmp_path), "uid-1", Container("app", "img",
                                                                         termination_message_path="/tmp/x"),
                                       random.Random(9))
    assert custom is not None and custom.container_path == "/tmp/x"
    assert termination.message_mount(str(tmp_path), "u", Container("a", "i", termination_message_path=""),
                                     random.Random()) is None


def test_the_pod_directory_goes_with_the_pod(tmp_path: Path) -> None:
    mount = termination.message_mount(str(tmp_path), "uid-1", Container("app", "img"), random.Random(1))
    assert mount is not None
    termination.remove_pod_dir(str(tmp_path), "uid-1")
    assert not (tmp_path / "pods" / "uid-1").exists()
    termination.remove_pod_dir(str(tmp_path), "never-there")  # nothing to do, no error


@given(st.lists(st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"")), max_size=60),
       st.binary(max_size=50).map(lambda b: b.replace(b"\n", b"")), st.integers(0, 70))
def test_tail_start_finds_the_last_n_terminated_lines(lines: list[bytes], unterminated: bytes, n: int) -> None:
    data = b"".join(line + b"\n" for line in lines) + unterminated
    start = termination.tail_lines_start(io.BytesIO(data), len(data), n)
    kept = lines[len(lines) - n:] if n else []
    if n >= len(lines):
        kept = lines
    assert data[start:] == b"".join(line + b"\n" for line in kept) + unterminated


@pytest.mark.parametrize(("data", "want"), [
    (b"2026-01-01T00:00:00.000000000Z stdout F hello\n", b"hello\n"),
    (b"2026-01-01T00:00:00.000000000Z stdout P hel\n2026-01-01T00:00:00.000000000Z stdout F lo\n", b"hello\n"),
    (b"2026-01-01T00:00:00.000000000Z stderr F \n", b"\n"),  # an empty line
    (b"garbage\n2026-01-01T00:00:00.000000000Z stdout F ok\n", b"ok\n"),  # skipped, as kubelet skips it
    (b"2026-01-01T00:00:00.000000000Z stdout F has spaces  in it\n", b"has spaces  in it\n"),
])
def test_cri_log_decoding(data: bytes, want: bytes) -> None:
    assert termination.decode_cri_log(data) == want


def test_pod_messages_share_12_kib() -> None:
    statuses: list[dict[str, Any]] = [{"name": f"c{i}", "state": {"terminated": {"message": "m" * 5000}},
                 "lastState": {"terminated": {"message": "é" * 3000}}} for i in range(4)]
    termination.truncate_pod_messages(4, statuses)
    for s in statuses:
        assert s["state"]["terminated"]["message"] == "m" * 3072
        assert len(s["lastState"]["terminated"]["message"].encode()) <= 3072  # never half a character
    few: list[dict[str, Any]] = [{"name": "c", "state": {"terminated": {"message": "m" * 4096}}}]
    termination.truncate_pod_messages(3, few)
    assert few[0]["state"]["terminated"]["message"] == "m" * 4096


@pytest.mark.parametrize("policy", [TERMINATION_MESSAGE_FILE, TERMINATION_MESSAGE_FALLBACK])
def test_the_policy_is_annotated_for_kubelet_to_read_back(policy: str) -> None:
    # regression: the annotation said File whatever the container's policy, so FallbackToLogsOnError was ignored
    container = Container("app", "img", termination_message_policy=policy, termination_message_path="/m")
    pod = Pod("uid", "p", "default", PodSpec(containers=(container,)))
    notes = labels.notes_from_annotations(labels.container_annotations(pod, container, 0))
    assert (notes.termination_message_policy, notes.termination_message_path) == (policy, "/m")



# -- end to end through the agent on the CRI emulator ---------------------------------------------------------


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[e2e.Node]:
    n = await e2e.start_node(tmp_path)
    try:
        yield n
    finally:
        await e2e.stop_node(n)


def terminated(pods: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    return dict(e2e.container(pods, name).get("state", {}).get("terminated") or {})


async def finished(node: e2e.Node, name: str, app: dict[str, Any]) -> dict[str, Any]:
    node.write(name, e2e.pod(name, app, restart="Never"))
    pods = await node.until(lambda p: bool(terminated(p, name)), limit_s=60)
    return terminated(pods, name)


async def test_the_message_the_container_wrote_to_its_file(node: e2e.Node) -> None:
    last = await finished(node, "wrote", e2e.helper("app", "--exit-after=1s", "--termination-message=all done"))
    assert (last["exitCode"], last["reason"], last["message"]) == (0, "Completed", "all done")
    # the file the agent made and mounted, under its root directory, as kubelet makes it
    uid = (await node.pods())[f"wrote-{e2e.NODE}"]["metadata"]["uid"]
    [host] = list((node.root / "kubelet" / "pods" / uid / "containers" / "app").iterdir())
    assert host.read_text() == "all done" and stat.S_IMODE(host.stat().st_mode) == 0o666
    async with node.channel() as channel:
        stub = api_grpc.RuntimeServiceStub(channel)
        [c] = (await stub.ListContainers(api.ListContainersRequest())).containers
        status = (await stub.ContainerStatus(api.ContainerStatusRequest(container_id=c.id))).status
    assert [(m.container_path, m.host_path) for m in status.mounts] == [("/dev/termination-log", str(host))]


async def test_a_custom_termination_message_path(node: e2e.Node) -> None:
    app = e2e.helper("app", "--exit-after=1s", "--exit-code=4", "--termination-message=custom",
                     "--termination-message-path=/tmp/why")
    app["terminationMessagePath"] = "/tmp/why"
    last = await finished(node, "custom", app)
    assert (last["exitCode"], last["message"]) == (4, "custom")


async def test_a_message_written_elsewhere_is_not_seen(node: e2e.Node) -> None:
    app = e2e.helper("app", "--exit-after=1s", "--termination-message=lost", "--termination-message-path=/tmp/x")
    last = await finished(node, "elsewhere", app)
    assert "message" not in last


async def test_fallback_to_logs_on_error_takes_the_logs_tail(node: e2e.Node) -> None:
    app = e2e.helper("app", "--log-rate=100", "--log-count=100", "--exit-after=2s", "--exit-code=1")
    app["terminationMessagePolicy"] = "FallbackToLogsOnError"
    last = await finished(node, "logs", app)
    assert (last["exitCode"], last["message"]) == (1, "".join(f"line {n}\n" for n in range(21, 101)))


async def test_fallback_keeps_at_most_2048_bytes_of_the_log(node: e2e.Node) -> None:
    app = e2e.helper("app", "--log-rate=10", "--log-count=10", "--log-line-bytes=1000", "--exit-after=2s",
                     "--exit-code=2")
    app["terminationMessagePolicy"] = "FallbackToLogsOnError"
    last = await finished(node, "wide", app)
    lines = [f"line {n} " + "x" * (1000 - len(f"line {n} ")) + "\n" for n in range(1, 11)]
    assert len(last["message"].encode()) == 2048 and last["message"] == "".join(lines)[-2048:]


async def test_fallback_does_not_apply_to_a_success_or_a_written_file(node: e2e.Node) -> None:
    ok = e2e.helper("ok", "--log-rate=10", "--log-count=3", "--exit-after=1s")
    ok["terminationMessagePolicy"] = "FallbackToLogsOnError"
    assert "message" not in await finished(node, "ok", ok)
    wrote = e2e.helper("app", "--log-rate=10", "--log-count=3", "--exit-after=1s", "--exit-code=1",
                       "--termination-message=from the file")
    wrote["terminationMessagePolicy"] = "FallbackToLogsOnError"
    assert (await finished(node, "wrote", wrote))["message"] == "from the file"
