"""Kubernetes value formats the agent reads: resource quantities and Go durations.

A quantity is a signed decimal number with an optional suffix: a binary SI suffix (``Ki Mi Gi Ti Pi Ei``,
powers of 1024), a decimal SI suffix (``n u m k M G T P E``, powers of 1000) or a decimal exponent
(``e3``, ``E-2``). ``"100m"`` is a tenth, ``"128Mi"`` is 134217728, ``"1e3"`` is 1000, ``"1E"`` is 10^18.
CPU is kept in millicores and everything else (memory, storage, pids, inodes) in whole units; like the
API server (which rounds quantities up to milli precision) we round up, never down.

A duration is Go's ``time.ParseDuration`` format as ``metav1.Duration`` carries it in a
``KubeletConfiguration``: a sequence of decimal numbers with units ``ns us µs ms s m h``, e.g. ``"10s"``,
``"1m30s"``, ``"500ms"``, ``"1.5h"``; a bare ``"0"`` is allowed.

Every error names the field it came from, so a bad value in a 200-line file is found at once.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

from kubeharness.errors import InvalidArgument

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_NUMBER = re.compile(r"^([+-]?)(\d+\.?\d*|\.\d+)(.*)$")
_EXPONENT = re.compile(r"^[eE]([+-]?\d+)$")

_DURATION_UNITS_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9,
                      "h": 3600 * 10**9}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")

CPU = "cpu"


def parse_quantity(value: object, field: str) -> Decimal:
    """The exact value of a quantity (a string, or a YAML/JSON number)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidArgument(f"{field}: quantity must be a string or a number, not {type(value).__name__}")
    text = value if isinstance(value, str) else str(value)
    match = _NUMBER.match(text)
    if match is None:
        raise InvalidArgument(f"{field}: {text!r} is not a quantity (e.g. '100m', '1.5', '128Mi', '1G', '1e3')")
    sign, number, suffix = match.groups()
    try:
        amount = Decimal(number)
    except InvalidOperation:  # pragma: no cover - the pattern only admits decimals
        raise InvalidArgument(f"{field}: {text!r} is not a quantity") from None
    if suffix in _BINARY:
        amount *= _BINARY[suffix]
    elif suffix in _DECIMAL:
        amount = amount.scaleb(_DECIMAL[suffix])
    elif (exp := _EXPONENT.match(suffix)) is not None:
        amount = amount.scaleb(int(exp.group(1)))
    else:
        raise InvalidArgument(f"{field}: {text!r} has an unknown suffix {suffix!r}")
    return -amount if sign == "-" else amount


def to_millicores(value: object, field: str) -> int:
    """A CPU quantity in millicores, rounded up: ``"100m"`` -> 100, ``"1.5"`` -> 1500, ``2`` -> 2000."""
    return _ceil(parse_quantity(value, field) * 1000)


def to_units(value: object, field: str) -> int:
    """A quantity in whole base units (bytes, pids, inodes), rounded up: ``"1Ki"`` -> 1024, ``"1k"`` -> 1000."""
    return _ceil(parse_quantity(value, field))


def parse_resource(name: str, value: object, field: str) -> int:
    """A non-negative resource amount: millicores for ``cpu``, base units for everything else."""
    amount = to_millicores(value, field) if name == CPU else to_units(value, field)
    if amount < 0:
        raise InvalidArgument(f"{field}: must be non-negative, got {value!r}")
    return amount


def parse_duration_ns(value: object, field: str) -> int:
    """A Go duration string in nanoseconds (negative durations keep their sign)."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{field}: duration must be a string such as '10s' or '1m30s', not {value!r}")
    text = value.strip()
    sign = -1 if text.startswith("-") else 1
    body = text[1:] if text[:1] in "+-" else text
    if body == "0":
        return 0
    total = Decimal(0)
    pos = 0
    while pos < len(body):
        part = _DURATION_PART.match(body, pos)
        if part is None:
            break
        total += Decimal(part.group(1)) * _DURATION_UNITS_NS[part.group(2)]
        pos = part.end()
    if not body or pos != len(body):
        raise InvalidArgument(f"{field}: {value!r} is not a duration (e.g. '10s', '1m30s', '500ms')")
    return sign * int(total)  # Go truncates fractions of a nanosecond


def parse_duration_s(value: object, field: str) -> float:
    """A Go duration string in seconds."""
    return parse_duration_ns(value, field) / 1e9


def format_quantity(amount: int, resource: str) -> str:
    """A canonical string for an amount in base units (millicores for cpu), for logs and status."""
    if resource == CPU:
        return f"{amount // 1000}" if amount % 1000 == 0 else f"{amount}m"
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        if amount and amount % _BINARY[suffix] == 0:
            return f"{amount // _BINARY[suffix]}{suffix}"
    return str(amount)


def _ceil(amount: Decimal) -> int:
    return math.ceil(amount)
