"""pytest plugin of the conformance suite: the ``target`` fixture, observations, and their JSON record.

Options: ``--cri-endpoint unix://...`` runs the specs against that runtime (default: an emulator per
test); ``--observations FILE`` writes, for every spec, its outcome and what it observed (status codes,
reasons, exit codes, fields), which :mod:`kubeharness.conformance.report` compares across targets.

A spec records what it saw with ``observe("what", value)`` before asserting, so a failing spec still
shows what the runtime did.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeharness.conformance.target import Target, emulator_target, endpoint_target

_RESULTS: dict[str, dict[str, Any]] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kubeharness conformance")
    group.addoption("--cri-endpoint", default="", help="CRI endpoint to test (default: the emulator, per test)")
    group.addoption("--observations", default="", help="write every spec's outcome and observations to this JSON file")


@pytest.fixture
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Target]:
    endpoint = request.config.getoption("--cri-endpoint")
    if endpoint:
        runtime = await endpoint_target(endpoint, tmp_path)
        server = None
    else:
        runtime, server = await emulator_target(tmp_path)
    request.node.user_properties.append(("target", runtime.name))
    try:
        yield runtime
    finally:
        await runtime.cleanup()
        await runtime.channel.close(None)
        if server is not None:
            await server.stop(grace=0)


@pytest.fixture
def observe(request: pytest.FixtureRequest) -> Callable[[str, Any], None]:
    """Record an observed value under a name (JSON-able: codes, strings, numbers, lists)."""

    def record(what: str, value: Any) -> None:
        if hasattr(value, "name") and not isinstance(value, str | int | float):
            value = value.name  # grpc.StatusCode and enums
        request.node.user_properties.append((f"observed:{what}", value))

    return record


def code_name(err: BaseException) -> str:
    """The gRPC status code name of an RPC error ("OK" when it is not one)."""
    code = getattr(err, "code", None)
    return str(code().name) if callable(code) else "OK"


KNOWN_DIFFERENCES = "known_differences.yaml"


def known_differences(spec_dir: Path) -> dict[str, str]:
    """Specs the emulator is known to fail (name -> why), from ``known_differences.yaml`` beside the specs."""
    path = spec_dir / KNOWN_DIFFERENCES
    if not path.is_file():
        return {}
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict) or not all(isinstance(v, str) and v for v in loaded.values()):
        raise pytest.UsageError(f"{path}: a mapping of spec name to the explanation of the difference")
    return {str(k): str(v) for k, v in loaded.items()}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On the emulator, a known difference is an expected failure (strict: once fixed, it must leave the list)."""
    if config.getoption("--cri-endpoint"):
        return
    cache: dict[Path, dict[str, str]] = {}
    for item in items:
        if "target" not in getattr(item, "fixturenames", ()):
            continue  # not a CRI spec (the node suite keeps its own differences)
        spec_dir = Path(str(item.path)).parent
        known = cache.setdefault(spec_dir, known_differences(spec_dir))
        name = item.name if item.name in known else getattr(item, "originalname", item.name)
        if name in known:  # a parametrised spec is listed as a whole or case by case
            item.add_marker(pytest.mark.xfail(strict=True, reason=f"known difference: {known[name]}"))


TEARDOWN_PROPERTIES = ("node_time", "timeline")  # what the node fixture records only once its spec is over


def record_report(results: dict[str, dict[str, Any]], report: pytest.TestReport) -> None:
    """Add one phase's report to ``results``: the outcome and observations of the spec's setup or call, and
    from its teardown the node fixture's ``node_time`` and ``timeline`` (put there after the call's report)."""
    if report.when == "teardown":
        entry = results.get(report.nodeid)
        if entry is not None:
            for key, value in report.user_properties:
                if key in TEARDOWN_PROPERTIES:
                    entry[key] = value
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        outcome = "known difference" if hasattr(report, "wasxfail") else report.outcome
        entry = results.setdefault(report.nodeid, {"outcome": outcome, "observed": {}})
        entry["outcome"] = outcome
        for key, value in report.user_properties:
            if key in ("target", "timeline"):
                entry[key] = value
            elif key.startswith("observed:"):
                entry["observed"][key.removeprefix("observed:")] = value
        if report.failed:
            entry["failure"] = str(report.longrepr).strip().splitlines()[-1][:500] if report.longrepr else ""
        elif report.skipped and isinstance(report.longrepr, tuple):  # (path, line, "Skipped: why")
            entry["skipped"] = str(report.longrepr[2]).removeprefix("Skipped: ")[:500]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    record_report(_RESULTS, report)


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("--observations", default="")
    if path and not hasattr(session.config, "workerinput"):  # the controller writes, once
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(_RESULTS, indent=1, sort_keys=True) + "\n")
