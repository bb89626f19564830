"""Regenerate (or check) the Python gRPC stubs for every ``.proto`` under ``kubeharness/wire/``.

The wire definitions (CRI ``runtime.v1`` today; CSI and kubelet plugin registration later) live as
``.proto`` files next to the stubs generated from them. Stubs are committed, so that installing the
package never needs a compiler; this module keeps them in step with the protos::

    python -m kubeharness.wire.generate           # rewrite the stubs in place
    python -m kubeharness.wire.generate --check   # exit 1, naming each stale stub, if out of date

Each proto is compiled by ``grpc_tools.protoc`` (from the pinned ``grpcio-tools`` dev dependency)
with the repository root as the import root, so a proto imports another as
``kubeharness/wire/<dir>/<name>.proto`` and the generated code imports
``from kubeharness.wire.cri import api_pb2``. The well-known types (``google/protobuf/*.proto``)
come from the include directory bundled with ``grpc_tools``. For ``<name>.proto`` three files are
written beside it: ``<name>_pb2.py``, ``<name>_pb2.pyi``, ``<name>_pb2_grpc.py`` and, from
mypy-protobuf's plugin, the typed ``<name>_pb2_grpc.pyi``.

The output depends on the ``grpcio-tools`` version, so ``--check`` is only meaningful with the
pinned version installed.
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.resources
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

WIRE_DIR = Path(__file__).resolve().parent
"""The ``kubeharness/wire`` package directory, searched recursively for ``*.proto``."""

REPO_ROOT = WIRE_DIR.parent.parent
"""The directory holding the ``kubeharness`` package: the protoc import root."""

GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
"""What protoc writes for each ``<name>.proto``: ``<name>`` plus each of these."""


class GenerationError(RuntimeError):
    """protoc failed; the message carries its output."""


def proto_files() -> list[Path]:
    """Every ``.proto`` under ``kubeharness/wire/``, relative to the repository root, sorted."""
    return sorted(p.relative_to(REPO_ROOT) for p in WIRE_DIR.rglob("*.proto"))


def _bundled_include_dir() -> Path:
    """The ``google/protobuf/*.proto`` include directory shipped inside ``grpc_tools``."""
    return Path(str(importlib.resources.files("grpc_tools") / "_proto"))


def _mypy_grpc_plugin() -> Path:
    """mypy-protobuf's protoc plugin that writes typed ``_pb2_grpc.pyi`` stubs (grpc.aio included)."""
    beside = Path(sys.executable).parent / "protoc-gen-mypy_grpc"
    found = beside if beside.is_file() else shutil.which("protoc-gen-mypy_grpc")
    if not found:
        raise GenerationError("protoc-gen-mypy_grpc not found: install the dev dependencies (mypy-protobuf)")
    return Path(found)


def _outputs_for(proto: Path) -> list[Path]:
    """The stub paths (relative to the repository root) that ``proto`` compiles to."""
    stem = proto.with_suffix("")
    return [stem.with_name(stem.name + suffix) for suffix in GENERATED_SUFFIXES]


def generate(out_root: Path) -> list[Path]:
    """Compile every wire proto, writing the stubs under ``out_root`` in the package layout.

    With ``out_root`` set to :data:`REPO_ROOT` this regenerates the committed stubs in place;
    with a scratch directory it produces a copy to compare against them. Returns the paths of
    the files written (under ``out_root``), sorted. Raises :class:`GenerationError` if protoc
    fails and :class:`FileNotFoundError` if there is no proto at all.
    """
    protos = proto_files()
    if not protos:
        raise FileNotFoundError(f"no .proto files under {WIRE_DIR}")
    out_root = out_root.resolve()
    out_root.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={REPO_ROOT}",
        f"--proto_path={_bundled_include_dir()}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--plugin=protoc-gen-mypy_grpc={_mypy_grpc_plugin()}",
        f"--mypy_grpc_out={out_root}",
        *(p.as_posix() for p in protos),
    ]
    result = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        output = (result.stderr + result.stdout).strip()
        raise GenerationError(
            f"protoc exited with status {result.returncode}:\n{output}"
        )
    written: list[Path] = []
    for proto in protos:
        for rel in _outputs_for(proto):
            target = out_root / rel
            if not target.is_file():
                raise GenerationError(
                    f"protoc reported success but did not write {rel.as_posix()}"
                )
            written.append(target)
    return sorted(written)


def _committed_stubs() -> list[Path]:
    """Generated-looking files currently under ``kubeharness/wire/``, relative to the repo root."""
    found: set[Path] = set()
    for suffix in GENERATED_SUFFIXES:
        found.update(p.relative_to(REPO_ROOT) for p in WIRE_DIR.rglob(f"*{suffix}"))
    return sorted(found)


def stale_files() -> list[str]:
    """Stub paths (POSIX, relative to the repository root) that do not match a fresh generation.

    A stub is stale if it is missing, differs from what the current protos compile to, or has no
    proto any more (an orphan left behind after a proto was deleted or renamed). An empty list
    means everything is up to date.
    """
    with tempfile.TemporaryDirectory(prefix="kubeharness-wire-") as tmp:
        scratch = Path(tmp)
        expected = {p.relative_to(scratch) for p in generate(scratch)}
        stale: set[Path] = set()
        for rel in expected:
            committed = REPO_ROOT / rel
            if not committed.is_file() or not filecmp.cmp(
                committed, scratch / rel, shallow=False
            ):
                stale.add(rel)
    stale.update(rel for rel in _committed_stubs() if rel not in expected)
    return sorted(p.as_posix() for p in stale)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m kubeharness.wire.generate",
        description="Regenerate the Python gRPC stubs for the protos under kubeharness/wire/.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write anything; exit 1 and list the stale stubs if any are out of date",
    )
    args = parser.parse_args(argv)
    try:
        if args.check:
            stale = stale_files()
            if stale:
                for name in stale:
                    print(f"stale generated file: {name}", file=sys.stderr)
                print(
                    f"{len(stale)} generated file(s) out of date; "
                    "run `python -m kubeharness.wire.generate` and commit the result",
                    file=sys.stderr,
                )
                return 1
            print(
                f"generated stubs are up to date ({len(proto_files())} proto file(s))"
            )
            return 0
        for written in generate(REPO_ROOT):
            print(f"wrote {written.relative_to(REPO_ROOT).as_posix()}")
        return 0
    except (GenerationError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
