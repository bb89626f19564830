"""Checks on client input, each raising INVALID_ARGUMENT with a message naming the field.

Ids and names are bounded so that a hostile client cannot make the emulator store megabytes per
object; paths that the emulator will write to are checked for traversal before anything is touched.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping

from kubeharness.errors import InvalidArgument

MAX_ID = 256
MAX_NAME = 1024


def require_id(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument(f"{field} must not be empty")
    if len(value) > MAX_ID:
        raise InvalidArgument(f"{field} is {len(value)} characters long; ids have at most {MAX_ID}")
    return value


def bounded(value: str, field: str, limit: int = MAX_NAME) -> str:
    if len(value) > limit:
        raise InvalidArgument(f"{field} is {len(value)} characters long; at most {limit} are accepted")
    return value


MAX_METADATA_MAP = 256 * 1024  # Kubernetes' limit on a pod's total annotation size


def bounded_map(mapping: Mapping[str, str], field: str, limit: int = MAX_METADATA_MAP) -> None:
    """Labels or annotations: at most ``limit`` bytes of keys and values together."""
    size = sum(len(k) + len(v) for k, v in mapping.items())
    if size > limit:
        raise InvalidArgument(f"{field} hold {size} bytes of keys and values; at most {limit} are accepted")


def require_name(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument(f"{field} must not be empty")
    return bounded(value, field)


def safe_directory(value: str, field: str) -> str:
    """An absolute directory without ``..`` components (or empty: no logs)."""
    if not value:
        return ""
    bounded(value, field, 4096)
    if "\x00" in value:
        raise InvalidArgument(f"{field} must not contain a NUL byte")
    if not value.startswith("/"):
        raise InvalidArgument(f"{field} {value!r} must be an absolute path")
    if ".." in value.split("/"):
        raise InvalidArgument(f"{field} {value!r} must not contain '..'")
    return posixpath.normpath(value)


def safe_relative(value: str, field: str) -> str:
    """A relative path that stays below its directory."""
    if not value:
        return ""
    bounded(value, field, 4096)
    if "\x00" in value:
        raise InvalidArgument(f"{field} must not contain a NUL byte")
    if value.startswith("/"):
        raise InvalidArgument(f"{field} {value!r} must be a path relative to the log directory")
    if ".." in value.split("/"):
        raise InvalidArgument(f"{field} {value!r} must not contain '..'")
    return posixpath.normpath(value)


def known_enum(value: int, allowed: dict[int, str] | set[int], field: str) -> int:
    if value not in allowed:
        raise InvalidArgument(f"{field} has the unknown value {value}")
    return value
