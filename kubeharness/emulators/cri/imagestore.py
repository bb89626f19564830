"""The images present on the emulated node, found by id, tag, digest reference or id prefix.

Containerd resolves an image spec in that order, which is why ``crictl rmi busybox`` and
``crictl rmi 3f2a`` both work. Tags move: pulling a tag that now names another image takes the tag
away from the old one, and an image left without tags or digests is removed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from kubeharness.emulators.cri.images import LocalImage, normalize_ref
from kubeharness.errors import InvalidArgument
from kubeharness.persist import Journal


class ImageStore:
    """Local images and their references, saved in the runtime's journal (kind "image")."""

    KIND = "image"

    def __init__(self, journal: Journal, records: Iterable[dict[str, Any]]) -> None:
        self._journal = journal
        self._by_id: dict[str, LocalImage] = {}
        self._by_ref: dict[str, str] = {}
        for record in records:
            self._index(LocalImage.from_record(record))

    def _index(self, image: LocalImage) -> None:
        self._by_id[image.id] = image
        for ref in image.repo_tags + image.repo_digests:
            self._by_ref[ref] = image.id

    def __iter__(self) -> Iterator[LocalImage]:
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)

    def resolve(self, spec: str) -> LocalImage | None:
        """The local image a client's image string names, or None."""
        if not spec:
            return None
        image = self._by_id.get(spec) or self._by_id.get("sha256:" + spec)
        if image is not None:
            return image
        try:
            canonical = normalize_ref(spec)
        except InvalidArgument:
            canonical = ""
        image_id = self._by_ref.get(canonical)
        if image_id is not None:
            return self._by_id[image_id]
        bare = spec.removeprefix("sha256:")
        if len(bare) >= 4 and all(c in "0123456789abcdef" for c in bare):
            matches = [i for i in self._by_id if i.removeprefix("sha256:").startswith(bare)]
            if len(matches) == 1:
                return self._by_id[matches[0]]
        return None

    def add(self, image: LocalImage) -> LocalImage:
        """Store a pulled image; its tags move to it from any other image that had them."""
        for ref in image.repo_tags:
            old_id = self._by_ref.get(ref)
            if old_id is not None and old_id != image.id:
                old = self._by_id[old_id]
                old.repo_tags = [t for t in old.repo_tags if t != ref]
                self._save_or_drop(old)
        existing = self._by_id.get(image.id)
        if existing is not None:
            existing.repo_tags = sorted(set(existing.repo_tags) | set(image.repo_tags))
            existing.repo_digests = sorted(set(existing.repo_digests) | set(image.repo_digests))
            existing.pinned = existing.pinned or image.pinned
            image = existing
        self._index(image)
        self._journal.put(self.KIND, image.id, image.to_record())
        return image

    def _save_or_drop(self, image: LocalImage) -> None:
        if image.repo_tags or image.repo_digests:
            self._journal.put(self.KIND, image.id, image.to_record())
        else:
            self.remove(image)

    def remove(self, image: LocalImage) -> None:
        self._by_id.pop(image.id, None)
        for ref in image.repo_tags + image.repo_digests:
            if self._by_ref.get(ref) == image.id:
                del self._by_ref[ref]
        self._journal.delete(self.KIND, image.id)

    def used_bytes(self) -> int:
        return sum(i.size_bytes for i in self._by_id.values())
