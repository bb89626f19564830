"""Static pod sources: a directory of manifests and an HTTP URL, stepped by hand or run on a virtual clock."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kubeharness.agent.pod.defaults import CONFIG_SEEN, CONFIG_SOURCE
from kubeharness.agent.sources.static import FileSource, HttpSource, PodSource, SourceUpdate
from kubeharness.clock import VirtualClock
from kubeharness.errors import InvalidArgument
from tests.conftest import eventually

NODE = "node-a"


def manifest(name: str, image: str = "busybox:1.36", **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, **meta},
            "spec": {"containers": [{"name": "app", "image": image}]}}


def write(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj))


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


def names(update: SourceUpdate | None) -> list[str]:
    assert update is not None
    return sorted(update.pods)


# ---- file source


async def test_first_read_sends_even_an_empty_set_then_only_changes(tmp_path: Path, clock: VirtualClock) -> None:
    source = FileSource(tmp_path, NODE, clock)
    first = await source.check_once()
    assert first == SourceUpdate("file", {})
    assert await source.check_once() is None


async def test_files_added_changed_and_removed(tmp_path: Path, clock: VirtualClock) -> None:
    source = FileSource(tmp_path, NODE, clock)
    await source.check_once()
    write(tmp_path / "web.yaml", manifest("web"))
    update = await source.check_once()
    assert names(update) == ["web-node-a_default"]
    assert update is not None
    pod = update.pods["web-node-a_default"]
    assert pod.source == "file" and pod.annotations[CONFIG_SOURCE] == "file"
    assert await source.check_once() is None  # nothing changed

    write(tmp_path / "web.yaml", manifest("web", image="busybox:1.37"))
    changed = await source.check_once()
    assert changed is not None
    new_pod = changed.pods["web-node-a_default"]
    assert new_pod.uid != pod.uid  # new content, new pod (kubelet: the hash is the UID)
    assert new_pod.spec.containers[0].image == "busybox:1.37"

    write(tmp_path / "db.json", manifest("db"))
    assert names(await source.check_once()) == ["db-node-a_default", "web-node-a_default"]
    (tmp_path / "web.yaml").unlink()
    assert names(await source.check_once()) == ["db-node-a_default"]
    assert source.pods.keys() == {"db-node-a_default"}


async def test_config_seen_is_the_first_time_the_uid_was_read(tmp_path: Path, clock: VirtualClock) -> None:
    source = FileSource(tmp_path, NODE, clock)
    write(tmp_path / "web.yaml", manifest("web"))
    first = await source.check_once()
    assert first is not None
    seen = first.pods["web-node-a_default"].annotations[CONFIG_SEEN]
    assert seen == "2026-01-01T00:00:00Z"
    await clock.advance(30)
    write(tmp_path / "db.yaml", manifest("db"))
    second = await source.check_once()
    assert second is not None
    assert second.pods["web-node-a_default"].annotations[CONFIG_SEEN] == seen
    assert second.pods["db-node-a_default"].annotations[CONFIG_SEEN] == "2026-01-01T00:00:30Z"
    assert second.pods["web-node-a_default"] == first.pods["web-node-a_default"]


async def test_a_bad_file_is_reported_and_the_others_go_on(tmp_path: Path, clock: VirtualClock) -> None:
    source = FileSource(tmp_path, NODE, clock)
    write(tmp_path / "a.yaml", manifest("web"))
    (tmp_path / "b.yaml").write_text("kind: [")
    write(tmp_path / "c.yaml", {**manifest("db"), "spec": {"containers": []}})
    write(tmp_path / "d.yaml", manifest("cache"))
    update = await source.check_once()
    assert names(update) == ["cache-node-a_default", "web-node-a_default"]
    assert set(source.errors) == {str(tmp_path / "b.yaml"), str(tmp_path / "c.yaml")}
    assert "not valid YAML or JSON" in source.errors[str(tmp_path / "b.yaml")]
    assert source.errors[str(tmp_path / "c.yaml")].startswith("spec.containers: required")

    write(tmp_path / "b.yaml", manifest("fixed"))
    (tmp_path / "c.yaml").unlink()
    assert names(await source.check_once()) == ["cache-node-a_default", "fixed-node-a_default", "web-node-a_default"]
    assert source.errors == {}


async def test_dotfiles_and_directories_are_ignored(tmp_path: Path, clock: VirtualClock) -> None:
    write(tmp_path / ".web.yaml.swp", manifest("swap"))
    write(tmp_path / ".hidden", manifest("hidden"))
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "nested.yaml", manifest("nested"))
    write(tmp_path / "web.yaml", manifest("web"))
    source = FileSource(tmp_path, NODE, clock)
    assert names(await source.check_once()) == ["web-node-a_default"]
    assert source.errors == {}


async def test_duplicate_names_first_file_wins(tmp_path: Path, clock: VirtualClock) -> None:
    write(tmp_path / "a.yaml", manifest("web", image="first"))
    write(tmp_path / "b.yaml", manifest("web", image="second"))
    write(tmp_path / "c.yaml", {"apiVersion": "v1", "kind": "List", "items": [manifest("db"), manifest("db")]})
    source = FileSource(tmp_path, NODE, clock)
    update = await source.check_once()
    assert update is not None
    assert update.pods["web-node-a_default"].spec.containers[0].image == "first"
    assert names(update) == ["db-node-a_default", "web-node-a_default"]
    assert "duplicate pod 'web-node-a_default'" in source.errors[str(tmp_path / "b.yaml")]
    assert str(tmp_path / "a.yaml") in source.errors[str(tmp_path / "b.yaml")]
    assert "duplicate pod 'db-node-a_default'" in source.errors[str(tmp_path / "c.yaml")]


async def test_a_single_file_and_a_missing_path(tmp_path: Path, clock: VirtualClock) -> None:
    file = tmp_path / "web.yaml"
    write(file, manifest("web"))
    assert names(await FileSource(file, NODE, clock).check_once()) == ["web-node-a_default"]
    missing = FileSource(tmp_path / "nope", NODE, clock)
    assert await missing.check_once() == SourceUpdate("file", {})
    assert missing.errors == {str(tmp_path / "nope"): "does not exist"}


async def test_run_picks_up_changes_at_the_next_poll(tmp_path: Path, clock: VirtualClock) -> None:
    source: PodSource = FileSource(tmp_path, NODE, clock, period_s=20, poll_interval_s=1)
    updates: asyncio.Queue[SourceUpdate] = asyncio.Queue()
    task = asyncio.create_task(source.run(updates))
    try:
        await clock.advance(0)
        assert updates.get_nowait() == SourceUpdate("file", {})
        write(tmp_path / "web.yaml", manifest("web"))
        assert updates.empty()
        await clock.advance(1)
        assert names(updates.get_nowait()) == ["web-node-a_default"]
        await clock.advance(60)  # periodic full reads find nothing new
        assert updates.empty()
        (tmp_path / "web.yaml").unlink()
        await clock.advance(1)
        assert updates.get_nowait() == SourceUpdate("file", {})
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# ---- http source


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""


@dataclass
class TinyServer:
    url: str
    reply: Reply
    server: asyncio.Server
    requests: list[bytes]


@pytest.fixture
async def http_server() -> AsyncIterator[TinyServer]:
    reply = Reply()
    requests: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.readuntil(b"\r\n\r\n"))
        head = f"HTTP/1.1 {reply.status} X\r\nContent-Length: {len(reply.body)}\r\nConnection: close\r\n\r\n"
        writer.write(head.encode() + reply.body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield TinyServer(f"http://127.0.0.1:{port}/pods", reply, server, requests)
    server.close()
    await server.wait_closed()


async def test_http_pod_and_list(http_server: TinyServer, clock: VirtualClock) -> None:
    source = HttpSource(http_server.url, NODE, clock, headers={"X-Token": ("secret",)})
    http_server.reply.body = json.dumps(manifest("web")).encode()
    update = await source.check_once()
    assert names(update) == ["web-node-a_default"]
    assert update is not None and update.source == "http"
    pod = update.pods["web-node-a_default"]
    assert pod.source == "http" and pod.annotations[CONFIG_SOURCE] == "http"
    assert b"X-Token: secret" in http_server.requests[0]
    assert await source.check_once() is None  # same body

    items = [manifest("web"), manifest("db")]
    http_server.reply.body = json.dumps({"apiVersion": "v1", "kind": "PodList", "items": items}).encode()
    update = await source.check_once()
    assert names(update) == ["db-node-a_default", "web-node-a_default"]
    assert update is not None and update.pods["web-node-a_default"] == pod  # same pod, same first-seen time
    assert source.errors == {}


async def test_http_errors_keep_the_last_set(http_server: TinyServer, clock: VirtualClock) -> None:
    source = HttpSource(http_server.url, NODE, clock)
    http_server.reply.body = json.dumps(manifest("web")).encode()
    assert names(await source.check_once()) == ["web-node-a_default"]

    http_server.reply.status = 500
    assert await source.check_once() is None
    assert source.errors == {http_server.url: "GET answered HTTP 500"}
    assert source.pods.keys() == {"web-node-a_default"}

    http_server.reply.status, http_server.reply.body = 200, b"kind: ["
    assert await source.check_once() is None
    assert "not valid YAML or JSON" in source.errors[http_server.url]
    http_server.reply.body = json.dumps({**manifest("web"), "spec": {}}).encode()
    assert await source.check_once() is None
    assert source.errors[http_server.url].startswith("spec.containers: required")
    assert source.pods.keys() == {"web-node-a_default"}

    http_server.reply.body = json.dumps(manifest("web")).encode()
    assert await source.check_once() is None  # back to the last good body: nothing changed
    assert source.errors == {}


async def test_http_server_gone_keeps_the_last_set(http_server: TinyServer, clock: VirtualClock) -> None:
    source = HttpSource(http_server.url, NODE, clock)
    http_server.reply.body = json.dumps(manifest("web")).encode()
    await source.check_once()
    http_server.server.close()
    await http_server.server.wait_closed()
    assert await source.check_once() is None
    assert source.errors[http_server.url].startswith("GET failed:")
    assert source.pods.keys() == {"web-node-a_default"}


async def test_http_empty_body_is_an_empty_set(http_server: TinyServer, clock: VirtualClock) -> None:
    source = HttpSource(http_server.url, NODE, clock)
    http_server.reply.body = json.dumps(manifest("web")).encode()
    await source.check_once()
    http_server.reply.body = b""
    assert await source.check_once() == SourceUpdate("http", {})
    assert "zero-length" in source.errors[http_server.url]


async def test_http_duplicates_in_a_list(http_server: TinyServer, clock: VirtualClock) -> None:
    source = HttpSource(http_server.url, NODE, clock)
    items = [manifest("web", image="first"), manifest("web", image="second")]
    http_server.reply.body = json.dumps({"apiVersion": "v1", "kind": "List", "items": items}).encode()
    update = await source.check_once()
    assert update is not None and update.pods["web-node-a_default"].spec.containers[0].image == "first"
    assert "duplicate pod 'web-node-a_default'" in source.errors[http_server.url]


async def test_http_run_polls_every_period(http_server: TinyServer, clock: VirtualClock) -> None:
    http_server.reply.body = json.dumps(manifest("web")).encode()
    source = HttpSource(http_server.url, NODE, clock, period_s=20)
    updates: asyncio.Queue[SourceUpdate] = asyncio.Queue()
    task = asyncio.create_task(source.run(updates))

    async def fetched(count: int) -> None:
        # the fetch itself runs in real time, on a worker thread; then the source sleeps on the clock again
        await eventually(lambda: len(http_server.requests) >= count and clock.pending() > 0,
                         f"{count} requests and the source waiting for its next period")

    try:
        assert names(await asyncio.wait_for(updates.get(), 5)) == ["web-node-a_default"]
        http_server.reply.body = json.dumps(manifest("db")).encode()
        await clock.advance(19)
        await asyncio.sleep(0.1)
        assert updates.empty() and len(http_server.requests) == 1
        await clock.advance(1)
        assert names(await asyncio.wait_for(updates.get(), 5)) == ["db-node-a_default"]
        for count in (3, 4):
            await clock.advance(20)
            await fetched(count)
        assert updates.empty() and len(http_server.requests) == 4  # unchanged answers send nothing
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_http_source_needs_an_http_url(clock: VirtualClock) -> None:
    with pytest.raises(InvalidArgument, match="staticPodURL"):
        HttpSource("file:///etc/pods.yaml", NODE, clock)
