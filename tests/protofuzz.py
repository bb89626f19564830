"""Hypothesis strategies that build any protobuf message from its descriptor, for the fuzz tests.

``message_strategy(api.RunPodSandboxRequest)`` draws requests in which every field of every kind may be
set: integers at their extremes and anywhere in range, floats including NaN and infinities, enums with
their valid values and out of range ones, strings that are empty, 64 KiB long, hold NUL bytes, unicode or
hostile paths (``..``, ``/a/../../etc/x``, deep, relative), bytes, nested messages to a bounded depth,
repeated fields and maps with odd keys. Each field is independently left unset or set, so hypothesis
shrinks a failing request towards the fewest fields that still fail.

Chosen fields can be overridden by name, e.g. to give ids drawn from the live objects of a stateful test::

    message_strategy(api.StartContainerRequest, overrides={"container_id": st.sampled_from(live_ids)})

An override key without a dot applies to that field name at any depth; a key qualified by the
containing message's name (``"ImageSpec.image"``) to that field of that message type wherever it
appears; a dotted path of field names (``"config.metadata.name"``) to that one path from the top
message, whose parents are then always set (even past ``max_depth``). The most specific key wins.
An override draws the field's final value in Python form (a scalar, a message, a list for a repeated
field, a dict for a map) or ``UNSET`` to leave the field alone. An overridden field is always drawn
from its override where its parent message is present. ``string_overrides`` turns names into
type-qualified keys for the string fields of those names only. Generic: nothing in here knows CRI or CSI.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, cast

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

__all__ = [
    "HUGE",
    "UNSET",
    "Overrides",
    "field_strategy",
    "hostile_bytes",
    "hostile_paths",
    "hostile_strings",
    "map_keys",
    "message_strategy",
    "string_overrides",
]

HUGE: Final = 64 * 1024  # length of the "huge" strings and bytes, in characters / bytes


class _Unset:
    """The value an override draws to leave a field unset."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()

Overrides = Mapping[str, st.SearchStrategy[Any]]

# -- scalars ----------------------------------------------------------------------------------------

_INT_RANGES: Final[dict[int, tuple[int, int]]] = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _integers(low: int, high: int) -> st.SearchStrategy[int]:
    """Any integer in [low, high], with the extremes and the small values near zero drawn often."""
    edges = sorted({v for v in (0, 1, -1, 2, low, low + 1, high, high - 1, 2**31 - 1, 2**32 - 1) if low <= v <= high})
    return st.one_of(st.sampled_from(edges), st.integers(-1000 if low < 0 else 0, 1000), st.integers(low, high))


def hostile_paths() -> st.SearchStrategy[str]:
    """File paths meant to escape a root: ``..`` anywhere, deep, absolute and relative, odd segments."""
    fixed = st.sampled_from([
        "", "/", ".", "..", "../", "/..", "../../etc/passwd", "/a/../../etc/x", "/etc/passwd", "a/b/../../../x",
        "./x", "x/", "//x//y", "/proc/self/root/etc", "/" + "a/" * 200 + "x", "../" * 50 + "tmp/x",
        "/tmp/\x00/x", "x\x00../../y", "/tmp/" + "n" * 300,
    ])
    segment = st.one_of(st.sampled_from(["..", ".", "", "a", "etc", "tmp", "x" * 255, "\x00", "é", " "]),
                        st.text(st.characters(codec="utf-8", exclude_characters="/"), max_size=8))
    built = st.builds(lambda lead, parts: lead + "/".join(parts), st.sampled_from(["", "/", "./", "../"]),
                      st.lists(segment, min_size=1, max_size=12))
    return st.one_of(fixed, built)


def hostile_strings() -> st.SearchStrategy[str]:
    """Strings a server must survive: empty, huge (also in multi-byte characters), NUL bytes, unicode,
    control characters, paths, any text."""
    fixed = st.sampled_from([
        "", " ", "x" * HUGE, "\u00e9" * 4000, "\U0001f600" * (HUGE // 4), "\x00", "a\x00b",
        "\x00" * 64, "é", "\U0001f600", "\u202e", "\ud7ff\ufffd",
        "\n", "\r\n", "\t", "%s%n", "${x}", "'\";--", "a=b", "a,b", "*", "-1", "0", "null",
    ])
    return st.one_of(fixed, hostile_paths(), st.text(max_size=40), st.text(st.characters(max_codepoint=127),
                                                                             max_size=12))


def hostile_bytes() -> st.SearchStrategy[bytes]:
    """Bytes: empty, huge, NUL, not UTF-8, arbitrary."""
    return st.one_of(st.sampled_from([b"", b"\x00", b"\xff\xfe", b"x" * HUGE, b"\x80" * 16]), st.binary(max_size=64))


def map_keys(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    """Keys for a map's key field: the odd ones (empty, NUL, slashes, ``..``, unicode, long) and any."""
    if field.type == FieldDescriptor.TYPE_STRING:
        odd = st.sampled_from(["", "\x00", "a/b", "..", "../x", "é", "k" * 1024, "a=b", "a,b", " ", "-"])
        return st.one_of(odd, st.text(max_size=12))
    return _scalar(field)


def _floats(width: int) -> st.SearchStrategy[float]:
    edges = st.sampled_from([0.0, -0.0, 1.0, -1.0, float("inf"), float("-inf"), float("nan")])
    return st.one_of(edges, st.floats(width=width))  # type: ignore[arg-type]


def _enum(enum: EnumDescriptor) -> st.SearchStrategy[int]:
    valid = st.sampled_from([v.number for v in enum.values])
    if getattr(enum, "is_closed", False):  # a proto2 enum cannot hold an unknown number
        return valid
    return st.one_of(valid, _integers(-(2**31), 2**31 - 1))


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in _INT_RANGES:
        return _integers(*_INT_RANGES[kind])
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_FLOAT:
        return _floats(32)
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return _floats(64)
    if kind == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        return _enum(field.enum_type)
    if kind == FieldDescriptor.TYPE_STRING:
        return hostile_strings()
    if kind == FieldDescriptor.TYPE_BYTES:
        return hostile_bytes()
    raise TypeError(f"{field.full_name}: no scalar strategy for field type {kind}")


# -- messages ---------------------------------------------------------------------------------------


def _message_type(field: FieldDescriptor) -> Descriptor:
    assert field.message_type is not None, field.full_name
    return field.message_type


def _is_map(field: FieldDescriptor) -> bool:
    return (field.type == FieldDescriptor.TYPE_MESSAGE and _message_type(field).GetOptions().map_entry
            and _is_repeated(field))


def _is_repeated(field: FieldDescriptor) -> bool:
    # ``is_repeated`` in newer protobuf releases, ``label`` in older ones
    flag = getattr(field, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return bool(getattr(field, "label", None) == FieldDescriptor.LABEL_REPEATED)


class _Builder:
    """Builds (and caches) the strategies for one top message, its overrides and its limits."""

    def __init__(self, overrides: Overrides, max_depth: int, max_size: int) -> None:
        self.overrides = dict(overrides)
        self.max_depth = max_depth
        self.max_size = max_size

    def override(self, path: str, field: FieldDescriptor) -> st.SearchStrategy[Any] | None:
        for key in (path, f"{field.containing_type.name}.{field.name}" if field.containing_type else "", field.name):
            if key in self.overrides:
                return self.overrides[key]
        return None

    def leads_to_override(self, path: str) -> bool:
        """Whether a dotted override lies below this message field (which is then always set)."""
        return any(key.startswith(path + ".") for key in self.overrides)  # type-qualified keys never match

    def value(self, field: FieldDescriptor, path: str, depth: int) -> st.SearchStrategy[Any] | None:
        """The strategy for one field's value; None when the depth limit leaves a message field unset."""
        if _is_map(field):
            key_field = _message_type(field).fields_by_name["key"]
            value_field = _message_type(field).fields_by_name["value"]
            values = self.single(value_field, path, depth)
            if values is None:
                return None
            return st.dictionaries(map_keys(key_field), values, max_size=self.max_size)
        single = self.single(field, path, depth)
        if single is None:
            return None
        if _is_repeated(field):
            return st.lists(single, max_size=self.max_size)
        return single

    def single(self, field: FieldDescriptor, path: str, depth: int) -> st.SearchStrategy[Any] | None:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= self.max_depth and not self.leads_to_override(path):
                return None
            return self.message(_message_type(field), path, depth + 1)
        return _scalar(field)

    def message(self, descriptor: Descriptor, path: str = "", depth: int = 0) -> st.SearchStrategy[Message]:
        plan: list[tuple[FieldDescriptor, st.SearchStrategy[Any], bool]] = []
        for field in descriptor.fields:
            field_path = f"{path}.{field.name}" if path else field.name
            forced = self.override(field_path, field)
            strategy = forced if forced is not None else self.value(field, field_path, depth)
            if strategy is not None:
                plan.append((field, strategy, forced is not None or self.leads_to_override(field_path)))
        cls = message_factory.GetMessageClass(descriptor)

        @st.composite
        def build(draw: st.DrawFn) -> Message:
            msg = cls()
            oneofs_taken: set[str] = set()
            for field, strategy, forced in plan:
                oneof = field.containing_oneof
                if oneof is not None and oneof.name in oneofs_taken:
                    continue
                if not forced and not draw(st.booleans()):
                    continue
                value = draw(strategy)
                if value is UNSET:
                    continue
                _assign(msg, field, value)
                if oneof is not None:
                    oneofs_taken.add(oneof.name)
            return msg

        return build()


def _assign(msg: Message, field: FieldDescriptor, value: Any) -> None:
    """Set one field of ``msg`` from a drawn Python value."""
    target: Any = getattr(msg, field.name)
    if _is_map(field):
        message_values = _message_type(field).fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE
        for key, item in value.items():
            if message_values:
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif _is_repeated(field):
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in value:
                target.add().CopyFrom(item)
        else:
            target.extend(value)
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(msg, field.name, value)


def field_strategy(field: FieldDescriptor, max_depth: int = 3, max_size: int = 3) -> st.SearchStrategy[Any]:
    """The strategy ``message_strategy`` uses for one field's value (a list for repeated, a dict for maps)."""
    strategy = _Builder({}, max_depth, max_size).value(field, field.name, 0)
    return strategy if strategy is not None else st.just(UNSET)


def string_overrides(descriptor_or_class: Descriptor | type[Message],
                     by_name: Overrides) -> dict[str, st.SearchStrategy[Any]]:
    """Type-qualified override keys (``"Message.field"``) for the *string* fields named in ``by_name``
    anywhere below a message: where a name means different things (CRI's ``container_id`` is a string
    in requests but an integer in ``IDMapping``), only the string fields get the strategy."""
    found: dict[str, st.SearchStrategy[Any]] = {}
    seen: set[str] = set()
    todo = [_descriptor_of(descriptor_or_class)]
    while todo:
        descriptor = todo.pop()
        if descriptor.full_name in seen:
            continue
        seen.add(descriptor.full_name)
        for field in descriptor.fields:
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                todo.append(_message_type(field))
            elif field.type == FieldDescriptor.TYPE_STRING and field.name in by_name:
                found[f"{descriptor.name}.{field.name}"] = by_name[field.name]
    return found


def _descriptor_of(descriptor_or_class: Descriptor | type[Message]) -> Descriptor:
    if isinstance(descriptor_or_class, type):
        return cast(Descriptor, descriptor_or_class.DESCRIPTOR)
    return descriptor_or_class


def message_strategy(descriptor_or_class: Descriptor | type[Message], overrides: Overrides | None = None,
                     max_depth: int = 3, max_size: int = 3) -> st.SearchStrategy[Message]:
    """Messages of the given type with any subset of their fields set to hostile or ordinary values.

    ``overrides`` maps field names (any depth) or dotted paths (from the top) to strategies for their
    values; ``max_depth`` bounds the nesting of message fields (deeper ones stay unset); ``max_size``
    bounds every repeated field and map.
    """
    return _Builder(overrides or {}, max_depth, max_size).message(_descriptor_of(descriptor_or_class))
