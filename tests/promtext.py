"""Reading a Prometheus text exposition in tests: samples parsed by prometheus_client's own parser, so that a
test compares values and label sets (``1`` and ``1.0`` alike, labels in any order), never a line's spelling."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def parse(text: str | bytes) -> list[Sample]:
    """Every sample of ``text``, in order."""
    body = text.decode() if isinstance(text, bytes) else text
    return [s for family in text_string_to_metric_families(body) for s in family.samples]


def matching(text: str | bytes, name: str, **labels: str) -> list[Sample]:
    """The samples named ``name`` (the full sample name: ``..._total``, ``..._bucket``) whose labels include
    ``labels``."""
    return [s for s in parse(text) if s.name == name and labels.items() <= s.labels.items()]


def value(text: str | bytes, name: str, **labels: str) -> float | None:
    """The value of the one sample named ``name`` with exactly ``labels``; None if there is none."""
    found = [s.value for s in parse(text) if s.name == name and s.labels == labels]
    assert len(found) <= 1, f"{name}{labels} appears {len(found)} times"
    return found[0] if found else None
