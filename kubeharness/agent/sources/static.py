"""Where desired pods come from: static pod files and an HTTP URL, as kubelet's config sources.

Each source produces the *whole* desired set of its pods (kubelet's ``SET`` update), keyed by full name
(``name_namespace``), whenever that set changes, and once at the start even when it is empty, so that
the agent knows the source has been read (kubelet's "all sources seen"). The loop (``run``) is separate
from the step (``check_once``), which tests call directly; time comes from the clock passed in.

- :class:`FileSource` reads ``staticPodPath``: every file of a directory (not recursing, dotfiles
  ignored, in name order) or a single file. A file that cannot be read, parsed or validated is logged and
  kept in ``errors`` (path -> message); the other files go on. Files are polled for changes (names,
  sizes, mtimes, inodes) every ``poll_interval_s`` and read in full at least every ``period_s``
  (kubelet's ``fileCheckFrequency``; kubelet also uses inotify, which we leave out). A missing path gives
  an empty set, as in kubelet.
- :class:`HttpSource` GETs ``staticPodURL`` every ``period_s`` (``httpCheckFrequency``) with kubelet's
  10 s timeout and 10 MB limit. A transport error, a status other than 200 or a bad manifest keeps the
  last good set and is reported in ``errors`` (url -> message); an empty body is an empty set (kubelet
  does the same). The default fetcher is urllib in a worker thread; tests may pass their own ``fetch``.

A full name seen twice (in two files, or twice in one list) is kept the first time and reported the
second, as kubelet's ``filterInvalidPods`` does. ``kubernetes.io/config.seen`` is the time a pod's UID
was first read by this source and stays put while the UID stays; a changed manifest is a new UID (its
content is part of the UID) and so a new pod, as in kubelet.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kubeharness.agent.config.kubelet import AgentConfig
from kubeharness.agent.pod.defaults import FILE_SOURCE, HTTP_SOURCE, ManifestError, pods_from_manifest, with_seen
from kubeharness.agent.pod.model import Pod
from kubeharness.clock import Clock, seconds_to_ns
from kubeharness.errors import InvalidArgument

log = logging.getLogger(__name__)

MAX_CONFIG_BYTES = 10 * 1024 * 1024  # kubelet's maxConfigLength for the HTTP source
HTTP_TIMEOUT_S = 10.0  # kubelet's client timeout for the manifest URL

# fetch(url, headers) -> (HTTP status, body)
Fetch = Callable[[str, Mapping[str, tuple[str, ...]]], Awaitable[tuple[int, bytes]]]


@dataclass(frozen=True)
class SourceUpdate:
    """The complete desired set of one source's pods, by full name."""

    source: str
    pods: dict[str, Pod]


class PodSource(Protocol):
    """What the agent's config loop needs from a source."""

    name: str
    errors: dict[str, str]

    async def check_once(self) -> SourceUpdate | None:
        """Read the source once; the new set if it changed (or on the first read), else None."""
        ...

    async def run(self, updates: asyncio.Queue[SourceUpdate]) -> None:
        """Check forever, putting each changed set on ``updates``."""
        ...


class _SetTracker:
    """The state both sources share: the last set sent, first-seen times, and per-item errors."""

    def __init__(self, source: str, node_name: str, clock: Clock) -> None:
        self.name = source
        self.node_name = node_name
        self.clock = clock
        self.errors: dict[str, str] = {}
        self._last: dict[str, Pod] | None = None
        self._first_seen_ns: dict[str, int] = {}

    @property
    def pods(self) -> dict[str, Pod]:
        """The last set sent (empty before the first read)."""
        return dict(self._last or {})

    def _collect(self, batches: list[tuple[str, list[Pod]]], errors: dict[str, str]) -> dict[str, Pod]:
        """Merge (origin, pods) batches in order: first full name wins, later ones become errors."""
        pods: dict[str, Pod] = {}
        origin_of: dict[str, str] = {}
        for origin, batch in batches:
            for pod in batch:
                if pod.full_name in pods:
                    first = origin_of[pod.full_name]
                    message = f"duplicate pod {pod.full_name!r} (already defined by {first}); ignored"
                    errors[origin] = f"{errors[origin]}; {message}" if origin in errors else message
                    continue
                pods[pod.full_name] = pod
                origin_of[pod.full_name] = origin
        return pods

    def _settle(self, pods: dict[str, Pod]) -> SourceUpdate | None:
        """Stamp first-seen times; the update if the set differs from the last one sent."""
        now = self.clock.now_ns()
        seen = {pod.uid: self._first_seen_ns.get(pod.uid, now) for pod in pods.values()}
        self._first_seen_ns = seen
        stamped = {key: with_seen(pod, seen[pod.uid]) for key, pod in pods.items()}
        if self._last is not None and stamped == self._last:
            return None
        self._last = stamped
        return SourceUpdate(self.name, dict(stamped))

    def _report(self, errors: dict[str, str]) -> None:
        for where, message in errors.items():
            if self.errors.get(where) != message:  # log each problem once, not every period
                log.warning("%s source: %s: %s", self.name, where, message)
        self.errors = errors


class FileSource(_SetTracker):
    """Static pods from a directory of manifests (or one manifest file)."""

    def __init__(self, path: str | Path, node_name: str, clock: Clock, period_s: float = 20.0, *,
                 poll_interval_s: float = 1.0) -> None:
        super().__init__(FILE_SOURCE, node_name, clock)
        self.path = Path(path)
        self.period_s = period_s
        self.poll_interval_s = min(poll_interval_s, period_s)
        self._fingerprint: object = None
        self._parsed: dict[str, tuple[bytes, list[Pod]]] = {}  # file: its bytes and their pods, last read

    async def check_once(self) -> SourceUpdate | None:
        return self.read()

    def read(self) -> SourceUpdate | None:
        """Read every manifest now (the step; synchronous, the files are local)."""
        self._fingerprint = self.fingerprint()
        errors: dict[str, str] = {}
        files = self._files(errors)
        batches = [(str(file), self._read_file(file, errors)) for file in files]
        present = {str(f) for f in files}
        self._parsed = {k: v for k, v in self._parsed.items() if k in present}
        pods = self._collect(batches, errors)
        self._report(errors)
        return self._settle(pods)

    def changed(self) -> bool:
        """Whether any manifest appeared, went or changed since the last read (cheap: stats only)."""
        return self.fingerprint() != self._fingerprint

    def fingerprint(self) -> object:
        entries = []
        for file in self._files({}):
            try:
                st = file.stat()
            except OSError:
                continue
            entries.append((file.name, st.st_size, st.st_mtime_ns, st.st_ino))
        return tuple(entries)

    async def run(self, updates: asyncio.Queue[SourceUpdate]) -> None:
        log.info("watching static pod path %s", self.path)
        while True:
            update = self.read()
            if update is not None:
                await updates.put(update)
            deadline = self.clock.now_ns() + seconds_to_ns(self.period_s)
            while (left := deadline - self.clock.now_ns()) > 0:
                await self.clock.sleep(min(self.poll_interval_s, left / 1e9))
                if self.changed():
                    break

    def _files(self, errors: dict[str, str]) -> list[Path]:
        try:
            if self.path.is_file():
                return [self.path]
            if not self.path.is_dir():
                problem = "does not exist" if not self.path.exists() else "is not a directory or a regular file"
                errors[str(self.path)] = problem
                return []
            names = sorted(entry.name for entry in os.scandir(self.path) if not entry.name.startswith("."))
        except OSError as exc:
            errors[str(self.path)] = f"cannot list: {exc.strerror or exc}"
            return []
        files = []
        for name in names:
            file = self.path / name
            if file.is_file():
                files.append(file)
            else:
                log.debug("not a regular file, not reading: %s", file)
        return files

    def _read_file(self, file: Path, errors: dict[str, str]) -> list[Pod]:
        # A symbolic link is followed wherever it points, as kubelet does: whoever may write into the static
        # pod path may run any pod (hostPath included), so a link there grants nothing more.
        try:
            data = file.read_bytes()
            cached = self._parsed.get(str(file))
            if cached is not None and cached[0] == data:
                return list(cached[1])  # the same bytes: the same (immutable) pods, not parsed again every period
            pods = pods_from_manifest(data, FILE_SOURCE, self.node_name, origin=str(file))
            self._parsed[str(file)] = (data, pods)
            return pods
        except OSError as exc:
            errors[str(file)] = f"cannot read: {exc.strerror or exc}"
        except ManifestError as exc:
            errors[str(file)] = exc.message.removeprefix(f"{file}: ")
        return []


class HttpSource(_SetTracker):
    """Static pods from a URL serving a Pod or a PodList."""

    def __init__(self, url: str, node_name: str, clock: Clock, period_s: float = 20.0, *,
                 headers: Mapping[str, tuple[str, ...]] | None = None, fetch: Fetch | None = None) -> None:
        super().__init__(HTTP_SOURCE, node_name, clock)
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise InvalidArgument(f"staticPodURL: {url!r} is not an http:// or https:// URL")
        self.url = url
        self.period_s = period_s
        self.headers = dict(headers or {})
        self._fetch = fetch or urllib_fetch
        self._data: bytes | None = None
        self._failures = 0

    async def check_once(self) -> SourceUpdate | None:
        try:
            status, body = await self._fetch(self.url, self.headers)
        except (OSError, ValueError) as exc:  # URLError, timeouts and refused connections are OSErrors
            self._fail(f"GET failed: {exc}")
            return None
        if status != 200:
            self._fail(f"GET answered HTTP {status}")
            return None
        if not body:
            self._report({self.url: "zero-length data received; no pods"})
            self._data = body
            return self._settle({})
        if body == self._data:  # unchanged since the last good read (kubelet short-circuits too)
            self._succeeded()
            return None
        try:
            batch = pods_from_manifest(body, HTTP_SOURCE, self.node_name, origin=self.url)
        except ManifestError as exc:
            self._fail(exc.message.removeprefix(f"{self.url}: "))
            return None
        errors: dict[str, str] = {}
        pods = self._collect([(self.url, batch)], errors)
        self._data = body
        self._succeeded(errors)
        return self._settle(pods)

    async def run(self, updates: asyncio.Queue[SourceUpdate]) -> None:
        log.info("watching static pod URL %s", self.url)
        while True:
            update = await self.check_once()
            if update is not None:
                await updates.put(update)
            await self.clock.sleep(self.period_s)

    def _fail(self, message: str) -> None:
        # kubelet logs the first three failures in a row, then quietens down
        level = logging.WARNING if self._failures < 3 else logging.DEBUG
        log.log(level, "http source: %s: %s (keeping the last %d pods)", self.url, message, len(self.pods))
        self._failures += 1
        self.errors = {self.url: message}

    def _succeeded(self, errors: dict[str, str] | None = None) -> None:
        if self._failures:
            log.info("http source: %s: read pods again", self.url)
        self._failures = 0
        self._report(errors or {})


async def urllib_fetch(url: str, headers: Mapping[str, tuple[str, ...]]) -> tuple[int, bytes]:
    """GET ``url`` in a worker thread: (status, body); loopback URLs never go through a proxy."""
    return await asyncio.to_thread(_get, url, headers)


def _get(url: str, headers: Mapping[str, tuple[str, ...]]) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={k: ", ".join(v) for k, v in headers.items()})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({})) if _is_loopback(url) else \
        urllib.request.build_opener()
    try:
        with opener.open(request, timeout=HTTP_TIMEOUT_S) as response:
            body = response.read(MAX_CONFIG_BYTES + 1)
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    if len(body) > MAX_CONFIG_BYTES:
        raise ValueError(f"the manifest is larger than {MAX_CONFIG_BYTES} bytes")
    return status, body


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def configured_sources(config: AgentConfig, clock: Clock) -> list[PodSource]:
    """The sources a KubeletConfiguration names: staticPodPath and staticPodURL."""
    found: list[PodSource] = []
    if config.static_pod_path:
        found.append(FileSource(config.static_pod_path, config.node_name, clock, config.file_check_frequency_s))
    if config.static_pod_url:
        found.append(HttpSource(config.static_pod_url, config.node_name, clock, config.http_check_frequency_s,
                                headers=config.static_pod_url_header))
    return found
