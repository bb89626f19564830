"""Reading the fields of a decoded pod object: :class:`Invalid`, a typed reader, and the API server's wording.

``pod.validation`` and ``pod.probespec`` both read raw (decoded, defaulted) objects and raise
:class:`Invalid` with the field path; ``pod.defaults`` wraps it into a ``ManifestError`` naming the origin.
The wording helpers give the problem text of the API's field error types
(``k8s.io/apimachinery/pkg/util/validation/field``), so a message reads as the API server's would:
``spec.containers[0].livenessProbe.successThreshold: Invalid value: 2: must be 1``. Values are printed as
Go prints them there: numbers and booleans plain, strings double-quoted. A value of the wrong JSON type,
which Go's decoder refuses before validation runs, is reported by :func:`typed` as ``must be an integer,
got '10'``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class Invalid(Exception):
    """A problem with the field path, raised while defaulting and validating; wrapped into a ManifestError."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def go_value(value: object) -> str:
    """A bad value as the API's field errors print it: ``2``, ``true``, ``"HTTP"``, ``null``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def invalid(field: str, value: object, detail: str) -> Invalid:
    """``field.Invalid``: ``Invalid value: <value>: <detail>``."""
    return Invalid(field, f"Invalid value: {go_value(value)}: {detail}")


def required(field: str, detail: str = "") -> Invalid:
    """``field.Required``: ``Required value`` (``: <detail>`` when there is one)."""
    return Invalid(field, f"Required value: {detail}" if detail else "Required value")


def forbidden(field: str, detail: str) -> Invalid:
    """``field.Forbidden``: ``Forbidden: <detail>``."""
    return Invalid(field, f"Forbidden: {detail}")


def not_supported(field: str, value: object, supported: Iterable[str]) -> Invalid:
    """``field.NotSupported``: ``Unsupported value: "x": supported values: "A", "B"``."""
    values = ", ".join(json.dumps(v) for v in supported)
    return Invalid(field, f"Unsupported value: {go_value(value)}: supported values: {values}")


def typed(obj: Mapping[str, Any], key: str, kind: type, path: str, default: Any = ...) -> Any:
    """``obj[key]`` checked to be of ``kind`` (``None`` or absent: ``default``, or required without one)."""
    value = obj.get(key)
    if value is None:
        if default is ...:
            raise Invalid(f"{path}.{key}", "required")
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = {int: "an integer", str: "a string", bool: "true or false", list: "a list", dict: "an object"}
        raise Invalid(f"{path}.{key}", f"must be {names.get(kind, kind.__name__)}, got {value!r}")
    return value


def typed_int(obj: Mapping[str, Any], key: str, path: str, default: int | None, *, bits: int = 32) -> int | None:
    """An integer field of Go type int32 or int64: a value that does not fit is refused, as Go's decoder does."""
    value: int | None = typed(obj, key, int, path, default)
    low, high = (INT32_MIN, INT32_MAX) if bits == 32 else (INT64_MIN, INT64_MAX)
    if value is not None and not low <= value <= high:
        raise Invalid(f"{path}.{key}", f"must be a {bits}-bit integer, got {value!r}")
    return value
