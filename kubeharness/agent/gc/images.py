"""Image garbage collection: unused images removed by disk usage and by age, as kubelet's image GC manager.

Kubelet's ``realImageGCManager`` (``pkg/kubelet/images/image_gc_manager.go``), driven as in kubelet's
``StartGarbageCollection`` (``pkg/kubelet/kubelet.go``):

- **Records** (kubelet's ``imageRecords``): every image the runtime lists gets ``first_detected`` when the
  agent first sees it, ``last_used`` set to now whenever a container (running or exited, as
  ``ListContainers`` lists them) uses it (its ``image_ref`` or ``image_id`` is the image's id), its size
  and whether the runtime pins it; images the runtime no longer lists are forgotten (:func:`detect`).
- **Eviction order**: images not in use and not pinned, least recently used first, ties the earliest
  detected (:func:`eviction_order`).
- **By age**: with ``imageMaximumGCAge`` set and once the agent has run that long, every image in the order
  unused for longer than it is removed, whatever the usage (:func:`too_old`).
- **By space**: usage of the image filesystem is ``100 - available*100/capacity`` (whole percents, kubelet's
  integer arithmetic); at or over ``imageGCHighThresholdPercent`` the pass frees
  ``capacity*(100-low)/100 - available`` bytes (:func:`bytes_to_free`), going down the order and skipping
  images younger than ``imageMinimumGCAge`` (since first detected), until it has freed that much
  (:func:`space_candidates`). If it could not, a Warning event ``FreeDiskSpaceFailed`` on the node with
  kubelet's message; a capacity of 0 gives ``InvalidDiskCapacity``. A failed removal is skipped, the others go on.
- **The loop**: a pass at start and every 5 minutes (``ImageGCPeriod``) on the agent's clock; a pass that
  fails twice in a row gives a Warning ``ImageGCFailed``. With the high threshold at 100 and no maximum
  age, image GC is off, as in kubelet.

Where the image filesystem's figures come from is a callable returning :class:`~kubeharness.agent.stats.types.FsStats`
(kubelet reads them from its stats provider): :func:`cri_image_fs` takes the used bytes from the runtime's
``ImageFsInfo`` and capacity and available bytes from ``statvfs`` of its mountpoint, or, for an emulated
runtime, from a configured capacity (``AgentConfig.image_fs_capacity_bytes``): the CRI's ImageFsInfo carries
no capacity, and the emulator's mountpoint is a real directory on the host's disk, whose statvfs says
nothing of the emulator's configured ``image_fs_capacity_bytes``. The node stats provider (``stats``) can
feed the same callable later.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace

import grpc

from kubeharness.agent.events import WARNING, Recorder
from kubeharness.agent.runtime.client import RuntimeClient
from kubeharness.agent.stats.types import FsStats
from kubeharness.clock import Clock, seconds_to_ns
from kubeharness.wire.cri import api_pb2 as api

log = logging.getLogger(__name__)

IMAGE_GC_PERIOD_S = 300.0  # kubelet's ImageGCPeriod
# kubelet's event reasons (pkg/kubelet/events)
FREE_DISK_SPACE_FAILED, INVALID_DISK_CAPACITY, IMAGE_GC_FAILED = "FreeDiskSpaceFailed", "InvalidDiskCapacity", \
    "ImageGCFailed"

ImageFs = Callable[[], Awaitable[FsStats]]


class ImageGCError(Exception):
    """A pass that did not do all it should (the message is kubelet's)."""


@dataclass(frozen=True)
class ImageGCPolicy:
    """Kubelet's ``ImageGCPolicy``, from imageGCHigh/LowThresholdPercent, imageMinimum/MaximumGCAge."""

    high_threshold_percent: int = 85
    low_threshold_percent: int = 80
    min_age_s: float = 120.0
    max_age_s: float = 0.0  # 0: off

    @property
    def enabled(self) -> bool:
        """Kubelet stubs image GC out when the high threshold is 100 and there is no maximum age."""
        return self.high_threshold_percent < 100 or self.max_age_s > 0


@dataclass(frozen=True)
class ImageRecord:
    first_detected_ns: int
    last_used_ns: int = 0  # 0: never seen in use
    size_bytes: int = 0
    pinned: bool = False


# ---- the policy, pure ---------------------------------------------------------------------------------


def images_in_use(containers: Iterable[api.Container]) -> set[str]:
    """The image ids the runtime's containers (all states) refer to: kubelet's imagesInUse."""
    used: set[str] = set()
    for c in containers:
        used.update(ref for ref in (c.image_ref, c.image_id) if ref)
    return used


def _used(image: api.Image, in_use: set[str]) -> bool:
    return image.id in in_use or any(d in in_use for d in image.repo_digests)


def detect(records: Mapping[str, ImageRecord], images: Iterable[api.Image], in_use: set[str],
           now_ns: int) -> dict[str, ImageRecord]:
    """Kubelet's detectImages: the new records (new images detected now, used ones used now, gone ones dropped)."""
    result: dict[str, ImageRecord] = {}
    for image in images:
        record = records.get(image.id) or ImageRecord(first_detected_ns=now_ns)
        record = replace(record, size_bytes=image.size, pinned=image.pinned,
                         last_used_ns=now_ns if _used(image, in_use) else record.last_used_ns)
        result[image.id] = record
    return result


def eviction_order(records: Mapping[str, ImageRecord], in_use_ids: set[str]) -> list[str]:
    """Kubelet's imagesInEvictionOrder: unused, unpinned image ids, least recently used (then detected) first."""
    candidates = [i for i, r in records.items() if i not in in_use_ids and not r.pinned]
    return sorted(candidates, key=lambda i: (records[i].last_used_ns, records[i].first_detected_ns, i))


def too_old(order: Iterable[str], records: Mapping[str, ImageRecord], policy: ImageGCPolicy, now_ns: int,
            began_ns: int) -> list[str]:
    """Kubelet's freeOldImages: the images unused for longer than the maximum age (none before the agent has
    run that long, so that a restart does not take everything)."""
    max_age = seconds_to_ns(policy.max_age_s)
    if not max_age or now_ns - began_ns <= max_age:
        return []
    return [i for i in order if now_ns - records[i].last_used_ns > max_age]


def usage_percent(capacity: int, available: int) -> int:
    """Kubelet's ``100 - int(available*100/capacity)``."""
    return 100 - (min(available, capacity) * 100) // capacity


def bytes_to_free(capacity: int, available: int, policy: ImageGCPolicy) -> int:
    """How much to free: 0 under the high threshold, else down to the low threshold. ``capacity`` > 0."""
    available = min(available, capacity)
    if usage_percent(capacity, available) < policy.high_threshold_percent:
        return 0
    return capacity * (100 - policy.low_threshold_percent) // 100 - available


def space_candidates(order: Iterable[str], records: Mapping[str, ImageRecord], policy: ImageGCPolicy,
                     now_ns: int) -> list[str]:
    """The images freeSpace may remove, in order: in the eviction order and at least the minimum age old."""
    min_age = seconds_to_ns(policy.min_age_s)
    return [i for i in order if records[i].last_used_ns < now_ns and now_ns - records[i].first_detected_ns >= min_age]


def not_enough_message(wanted: int, freed: int) -> str:
    return (f"Failed to garbage collect required amount of images. Attempted to free {wanted} bytes, but only found "
            f"{freed} bytes eligible to free.")


# ---- the image filesystem's figures ---------------------------------------------------------------------


def cri_image_fs(client: RuntimeClient, clock: Clock, capacity_bytes: int | None = None) -> ImageFs:
    """The image filesystem from ImageFsInfo: used bytes from it; capacity and available from ``statvfs`` of
    its mountpoint, or, with ``capacity_bytes`` (an emulated runtime), that capacity less the used bytes."""
    async def read() -> FsStats:
        info = await client.image_fs_info()
        if not info.image_filesystems:
            raise ImageGCError("the runtime reported no image filesystem")
        fs = info.image_filesystems[0]
        used = fs.used_bytes.value
        if capacity_bytes is not None:
            return FsStats(time_ns=clock.now_ns(), capacity_bytes=capacity_bytes,
                           available_bytes=max(capacity_bytes - used, 0), used_bytes=used)
        try:
            st = os.statvfs(fs.fs_id.mountpoint)
        except OSError as err:
            raise ImageGCError(f"cannot read the image filesystem at {fs.fs_id.mountpoint!r}: "
                               f"{err.strerror or err}") from None
        return FsStats(time_ns=clock.now_ns(), capacity_bytes=st.f_blocks * st.f_frsize,
                       available_bytes=st.f_bavail * st.f_frsize, used_bytes=used)
    return read


# ---- the manager: one pass, and the loop --------------------------------------------------------------


class ImageGC:
    """Kubelet's image GC manager for one agent."""

    def __init__(self, client: RuntimeClient, clock: Clock, recorder: Recorder, policy: ImageGCPolicy,
                 image_fs: ImageFs) -> None:
        self.client = client  # ListImages, ListContainers, RemoveImage
        self.clock = clock
        self.recorder = recorder  # node events
        self.policy = policy
        self.image_fs = image_fs  # the image filesystem's capacity, available and used bytes
        self.records: dict[str, ImageRecord] = {}
        self.began_ns = clock.now_ns()  # kubelet's beganGC: the maximum age counts from here
        self.removed: list[tuple[str, str]] = []  # (image id, "age" or "space"): what the agent removed
        self._lock = asyncio.Lock()

    async def _order(self, now_ns: int) -> list[str]:
        images = await self.client.list_images()
        in_use = images_in_use(await self.client.list_containers())
        self.records = detect(self.records, images, in_use, now_ns)
        used_ids = {i.id for i in images if _used(i, in_use)}
        return eviction_order(self.records, used_ids)

    async def _remove(self, image_id: str, reason: str, errors: list[str]) -> bool:
        try:
            await self.client.remove_image(image_id)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNAVAILABLE:
                raise
            errors.append(f"{image_id}: {err.details()}")
            return False
        log.info("image GC: removed image %s (%s, %d bytes)", image_id, reason,
                 self.records.get(image_id, ImageRecord(0)).size_bytes)
        self.records.pop(image_id, None)
        self.removed.append((image_id, reason))
        return True

    async def detect(self) -> None:
        """Kubelet's periodic detectImages alone: refresh the records."""
        async with self._lock:
            await self._order(self.clock.now_ns())

    async def collect(self) -> int:
        """One pass (kubelet's GarbageCollect); the bytes freed for space. Raises :class:`ImageGCError` when
        it could not free enough or a removal failed (after the event, as kubelet)."""
        async with self._lock:
            now = self.clock.now_ns()
            order = await self._order(now)
            errors: list[str] = []
            old = too_old(order, self.records, self.policy, now, self.began_ns)
            for image_id in old:
                await self._remove(image_id, "age", errors)
            if errors:
                raise ImageGCError(f"wanted to free images older than {self.policy.max_age_s:g}s, encountered "
                                   f"errors in image deletion: {'; '.join(errors)}")
            order = [i for i in order if i in self.records]
            fs = await self.image_fs()
            capacity = fs.capacity_bytes or 0
            if capacity <= 0:
                message = "invalid capacity 0 on image filesystem"
                self.recorder.record_node(WARNING, INVALID_DISK_CAPACITY, message)
                raise ImageGCError(message)
            available = fs.available_bytes if fs.available_bytes is not None else capacity - (fs.used_bytes or 0)
            wanted = bytes_to_free(capacity, available, self.policy)
            if wanted <= 0:
                return 0
            log.info("image GC: image filesystem usage %d%% is at or over the high threshold %d%%; freeing %d bytes",
                     usage_percent(capacity, available), self.policy.high_threshold_percent, wanted)
            freed = await self._free(space_candidates(order, self.records, self.policy, now), wanted, errors)
            if errors:
                raise ImageGCError(f"wanted to free {wanted} bytes, but freed {freed} bytes space with errors in "
                                   f"image deletion: {'; '.join(errors)}")
            if freed < wanted:
                message = not_enough_message(wanted, freed)
                self.recorder.record_node(WARNING, FREE_DISK_SPACE_FAILED, message)
                raise ImageGCError(message)
            return freed

    async def _free(self, candidates: list[str], wanted: float, errors: list[str]) -> int:
        freed = 0
        for image_id in candidates:
            size = self.records[image_id].size_bytes
            if await self._remove(image_id, "space", errors):
                freed += size
                if freed >= wanted:
                    break
        return freed

    async def delete_unused(self) -> int:
        """Kubelet's DeleteUnusedImages (the eviction manager's reclaim): every eligible unused image; bytes freed."""
        async with self._lock:
            now = self.clock.now_ns()
            order = await self._order(now)
            errors: list[str] = []
            freed = await self._free(space_candidates(order, self.records, self.policy, now), math.inf, errors)
            if errors:
                raise ImageGCError(f"freed {freed} bytes space with errors in image deletion: {'; '.join(errors)}")
            return freed

    async def run(self, period_s: float = IMAGE_GC_PERIOD_S) -> None:
        """The loop: a pass now and every ``period_s``; two failed passes in a row give ``ImageGCFailed``. With
        GC off the images are still detected now and every ``period_s`` (kubelet's image manager Start runs
        detectImages every 5 minutes whatever the thresholds), so that the eviction manager's reclaim
        (:meth:`delete_unused`) sees how long each has been there."""
        if not self.policy.enabled:
            log.info("image GC is off: imageGCHighThresholdPercent is 100 and imageMaximumGCAge is 0")
            while True:
                try:
                    await self.detect()
                except grpc.aio.AioRpcError as err:
                    log.warning("image GC: failed to detect images: %s", err.code().name)
                await self.clock.sleep(period_s)
        failed_before = False
        while True:
            try:
                await self.collect()
                failed_before = False
            except (ImageGCError, grpc.aio.AioRpcError) as err:
                message = str(err) if isinstance(err, ImageGCError) else f"{err.code().name}: {err.details()}"
                if failed_before:
                    log.error("image garbage collection failed multiple times in a row: %s", message)
                    self.recorder.record_node(WARNING, IMAGE_GC_FAILED, message)
                else:
                    log.warning("image garbage collection failed once: %s", message)
                failed_before = True
            await self.clock.sleep(period_s)
