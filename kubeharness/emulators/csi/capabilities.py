"""Reading the capabilities and capacity ranges of CSI requests, with the spec's checks.

A VolumeCapability must say its access type (block or mount) and an access mode other than UNKNOWN;
a capacity range's limit may not be below its requirement. Violations are INVALID_ARGUMENT naming the
field; mount flags outside what the plugin supports are too (see :mod:`.mounts`). Sizes beyond the
largest volume are OUT_OF_RANGE, sizes beyond what is left of the budget RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

from kubeharness.emulators.csi.mounts import check_flags
from kubeharness.emulators.csi.volumes import Capability
from kubeharness.errors import InvalidArgument, OutOfRange, ResourceExhausted
from kubeharness.wire.csi import csi_pb2 as csi

Mode = csi.VolumeCapability.AccessMode
SINGLE_NODE_MODES = frozenset({Mode.SINGLE_NODE_WRITER, Mode.SINGLE_NODE_READER_ONLY,
                               Mode.SINGLE_NODE_SINGLE_WRITER, Mode.SINGLE_NODE_MULTI_WRITER})
# Modes under which only one target on the node may publish the volume read-write.
ONE_WRITER_MODES = frozenset({Mode.SINGLE_NODE_WRITER, Mode.SINGLE_NODE_SINGLE_WRITER})
READ_ONLY_MODES = frozenset({Mode.SINGLE_NODE_READER_ONLY, Mode.MULTI_NODE_READER_ONLY})


def require(value: str, field_name: str) -> str:
    """``value``, or INVALID_ARGUMENT when the client left the required field empty."""
    if not value:
        raise InvalidArgument(f"{field_name} is required")
    return value


def present(field_name: str, is_set: bool) -> None:
    """INVALID_ARGUMENT when the client left the required message ``field_name`` unset."""
    if not is_set:
        raise InvalidArgument(f"{field_name} is required")


def capability(field_name: str, cap: csi.VolumeCapability, is_set: bool = True) -> Capability:
    """Our record of one capability, or INVALID_ARGUMENT naming ``field_name``."""
    present(field_name, is_set)
    kind = cap.WhichOneof("access_type")
    if kind is None:
        raise InvalidArgument(f"{field_name}: access type (block or mount) is required")
    mode = cap.access_mode.mode
    if mode == Mode.UNKNOWN or mode not in Mode.Mode.values():
        raise InvalidArgument(f"{field_name}: access mode {mode} is not a known mode")
    if kind == "block":
        return Capability("block", mode)
    flags = tuple(cap.mount.mount_flags)
    check_flags(flags)
    return Capability("mount", mode, cap.mount.fs_type, flags)


def capabilities(field_name: str, caps: list[csi.VolumeCapability]) -> list[Capability]:
    if not caps:
        raise InvalidArgument(f"{field_name} is required")
    return [capability(f"{field_name}[{i}]", c) for i, c in enumerate(caps)]


def wire_capability(cap: Capability) -> csi.VolumeCapability:
    out = csi.VolumeCapability(access_mode=csi.VolumeCapability.AccessMode(mode=cap.mode))  # type: ignore[arg-type]
    if cap.access_type == "block":
        out.block.SetInParent()
    else:
        out.mount.fs_type = cap.fs_type
        out.mount.mount_flags.extend(cap.mount_flags)
    return out


def size_for(field_name: str, wanted: csi.CapacityRange, present: bool, default: int, budget_left: int,
             largest: int) -> int:
    """The size to give for a capacity range: the requirement (or the default, within the limit).

    Larger than any volume can be (the whole budget): OUT_OF_RANGE, the spec's "unsupported capacity";
    more than what is left of the budget now: RESOURCE_EXHAUSTED."""
    if not present:
        return default
    required, limit = wanted.required_bytes, wanted.limit_bytes
    if required < 0 or limit < 0:
        raise InvalidArgument(f"{field_name}: sizes must not be negative")
    if limit and required > limit:
        raise InvalidArgument(f"{field_name}: required_bytes {required} exceeds limit_bytes {limit}")
    size = required or (min(default, limit) if limit else default)
    if size > largest:
        raise OutOfRange(f"{field_name}: {size} bytes is more than the largest volume this plugin makes "
                         f"({largest} bytes)")
    if size > budget_left:
        raise ResourceExhausted(f"{field_name}: {size} bytes is more than the {budget_left} bytes of capacity left")
    return size
