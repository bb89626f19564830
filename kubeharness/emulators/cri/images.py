"""Images: a virtual registry described by a catalog, and the local image store that pulls fill.

Catalog entries (YAML or Python dicts)::

    - ref: docker.io/library/busybox:1.36     # or refs: [a, b] for several tags of one image
      size_bytes: 2155000                      # pull time = size / pull_bandwidth_bytes_per_second
      pull_delay_ms: 0                         # extra fixed delay on top
      entrypoint: []                           # the image config's Entrypoint and Cmd
      cmd: [sh]
      user: "0"                                # numeric uid or a user name
      kind: ""                                 # "pause" for a pause image
      auth: {username: u, password: p}         # the registry demands these credentials
      missing: true                            # the registry answers "not found"

References are normalised the way Docker and containerd do (``busybox`` is
``docker.io/library/busybox:latest``). Ids and digests are derived from the reference, so the same
catalog always yields the same ids. Images that a running or created container uses cannot be
removed: RemoveImage answers FAILED_PRECONDITION naming the container, and kubelet's image
garbage collector, which skips images in use, never trips over it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kubeharness.errors import InvalidArgument

_NAME_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
_MAX_REF = 4096
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = re.compile(rf"^(?:{_LABEL}(?:\.{_LABEL})*)(?::\d+)?$")  # host[:port], port numeric

DEFAULT_CATALOG: list[dict[str, Any]] = [
    {"ref": "registry.k8s.io/pause:3.10", "size_bytes": 320_368, "kind": "pause", "entrypoint": ["/pause"],
     "user": "65535"},
    {"refs": ["docker.io/library/busybox:1.36", "docker.io/library/busybox:latest"], "size_bytes": 2_155_000,
     "cmd": ["sh"], "kind": "busybox"},
    # the test image: the helper on a busybox-static base, so exec probes can use the shell too
    {"ref": "kubeharness.test/khelper:1", "size_bytes": 1_800_000, "entrypoint": ["/khelper"], "kind": "busybox"},
    # two tags of one image that only image-removal specs use (kubeharness env builds the same)
    {"refs": ["kubeharness.test/removable:1", "kubeharness.test/removable:2"], "size_bytes": 2_155_000,
     "cmd": ["sh"], "kind": "busybox"},
    # the image only the "remove an image a running container uses" spec pulls and removes
    {"ref": "kubeharness.test/inuse:1", "size_bytes": 2_155_000, "cmd": ["sh"], "kind": "busybox"},
    # an opaque program (no shell, no files): runs until stopped, dies of SIGTERM (143)
    {"ref": "kubeharness.test/app:1", "size_bytes": 5_000_000, "entrypoint": ["/app"], "user": "0"},
    {"ref": "kubeharness.test/big:1", "size_bytes": 1024**3, "entrypoint": ["/khelper"]},
    {"ref": "kubeharness.test/private:1", "size_bytes": 1_800_000, "entrypoint": ["/khelper"],
     "auth": {"username": "kubeharness", "password": "secret"}},
    {"ref": "kubeharness.test/missing:1", "missing": True},
]


def normalize_ref(ref: str) -> str:
    """Canonical ``domain/path:tag`` or ``domain/path@digest``; INVALID_ARGUMENT if malformed."""
    if not ref or len(ref) > _MAX_REF or ref != ref.strip() or any(c.isspace() for c in ref):
        raise InvalidArgument(f"invalid image reference {ref[:256]!r}")
    name, at, digest = ref.partition("@")
    if at and not _DIGEST.match(digest):
        raise InvalidArgument(f"invalid image reference {ref[:256]!r}: bad digest")
    tag = ""
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > last_slash:
        name, tag = name[:colon], name[colon + 1 :]
        if not _TAG.match(tag):
            raise InvalidArgument(f"invalid image reference {ref[:256]!r}: bad tag")
    parts = name.split("/")
    if len(parts) == 1 or not ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = ["docker.io", *parts]
    if not _DOMAIN.match(parts[0]):
        raise InvalidArgument(f"invalid image reference {ref[:256]!r}: bad registry host {parts[0][:256]!r}")
    if parts[0] == "docker.io" and len(parts) == 2:
        parts.insert(1, "library")
    if not all(_NAME_COMPONENT.match(p) for p in parts[1:]):
        raise InvalidArgument(f"invalid image reference {ref[:256]!r}: repository names are lower case")
    repo = "/".join(parts)
    if at:
        return f"{repo}@{digest}"
    return f"{repo}:{tag or 'latest'}"


def repository(ref: str) -> str:
    """``docker.io/library/busybox:1.36`` -> ``docker.io/library/busybox``."""
    if "@" in ref:
        return ref.split("@", 1)[0]
    return ref.rsplit(":", 1)[0]


def _sha256(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


@dataclass
class CatalogImage:
    """One image the virtual registry serves."""

    refs: list[str]
    id: str
    digest: str
    size_bytes: int = 0
    pull_delay_ms: int = 0
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    user: str = ""
    kind: str = ""
    auth: dict[str, str] | None = None
    missing: bool = False


# "": an opaque program (its command runs as the behaviour vocabulary says); "busybox": a busybox file
# layout whose commands the shell subset interprets; "pause": the pause image.
IMAGE_KINDS = frozenset({"", "busybox", "pause"})
_ENTRY_KEYS = {"ref", "refs", "size_bytes", "pull_delay_ms", "entrypoint", "cmd", "user", "kind", "auth",
               "missing", "id", "digest"}


def _entry(raw: Any, index: int) -> CatalogImage:
    where = f"image catalog entry {index}"
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{where} must be a mapping")
    unknown = set(raw) - _ENTRY_KEYS
    if unknown:
        raise InvalidArgument(f"{where}: unknown key(s) {sorted(unknown)}")
    refs = raw.get("refs") or ([raw["ref"]] if "ref" in raw else [])
    if not refs or not all(isinstance(r, str) for r in refs):
        raise InvalidArgument(f"{where} needs 'ref' or 'refs'")
    canonical = [normalize_ref(r) for r in refs]
    for key in ("size_bytes", "pull_delay_ms"):
        if not isinstance(raw.get(key, 0), int) or raw.get(key, 0) < 0:
            raise InvalidArgument(f"{where}: {key} must be a non-negative integer")
    for key in ("entrypoint", "cmd"):
        value = raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidArgument(f"{where}: {key} must be a list of strings")
    if raw.get("kind", "") not in IMAGE_KINDS:
        raise InvalidArgument(f"{where}: kind must be one of {sorted(IMAGE_KINDS)}, not {raw.get('kind')!r}")
    auth = raw.get("auth")
    if auth is not None and not (isinstance(auth, dict) and {"username", "password"} <= set(auth)):
        raise InvalidArgument(f"{where}: auth needs username and password")
    return CatalogImage(
        refs=canonical,
        id=str(raw.get("id") or _sha256("config:" + canonical[0])),
        digest=str(raw.get("digest") or _sha256("manifest:" + canonical[0])),
        size_bytes=int(raw.get("size_bytes", 0)),
        pull_delay_ms=int(raw.get("pull_delay_ms", 0)),
        entrypoint=list(raw.get("entrypoint", [])),
        cmd=list(raw.get("cmd", [])),
        user=str(raw.get("user", "")),
        kind=str(raw.get("kind", "")),
        auth=dict(auth) if auth else None,
        missing=bool(raw.get("missing", False)),
    )


class Catalog:
    """The virtual registry: what can be pulled, by canonical reference or by digest."""

    def __init__(self, entries: Iterable[Any]) -> None:
        self._by_ref: dict[str, CatalogImage] = {}
        for index, raw in enumerate(entries):
            image = _entry(raw, index)
            for ref in image.refs:
                self._by_ref[ref] = image
                self._by_ref[f"{repository(ref)}@{image.digest}"] = image

    def lookup(self, canonical_ref: str) -> CatalogImage | None:
        return self._by_ref.get(canonical_ref)


@dataclass
class LocalImage:
    """An image present in the runtime's image store."""

    id: str
    repo_tags: list[str]
    repo_digests: list[str]
    size_bytes: int
    entrypoint: list[str]
    cmd: list[str]
    user: str
    kind: str
    pinned: bool = False

    def to_record(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> LocalImage:
        return cls(**record)

    @classmethod
    def from_catalog(cls, image: CatalogImage, ref: str, pinned: bool) -> LocalImage:
        tags = [ref] if "@" not in ref else []
        return cls(
            id=image.id,
            repo_tags=tags,
            repo_digests=[f"{repository(r)}@{image.digest}" for r in sorted({repository(x) for x in image.refs})],
            size_bytes=image.size_bytes,
            entrypoint=list(image.entrypoint),
            cmd=list(image.cmd),
            user=image.user,
            kind=image.kind,
            pinned=pinned,
        )
