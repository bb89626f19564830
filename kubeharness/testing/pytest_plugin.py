"""pytest fixtures for testing against the CRI emulator; registered by installing kubeharness (entry point pytest11).

- ``cri_emulator``: a fresh :class:`~kubeharness.testing.CriEmulator` for each test, its files in the test's
  ``tmp_path``; stopped afterwards.
- ``cri_emulator_options``: the keyword arguments it is started with (``{}``); override it in a conftest or
  test module, e.g. to return ``{"plan": {...}, "restart_on_crash": True}``.
- ``cri_faults``: the emulator's fault control (:class:`~kubeharness.testing.BlockingFaultControl`:
  ``load``, ``replace``, ``rules``, ``clear``, ``fired``); the rules are cleared after the test, so it also
  serves a longer-lived ``cri_emulator`` that a suite defines itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # imported when a fixture is used, so that merely installing kubeharness costs pytest nothing
    from kubeharness.testing import BlockingFaultControl, CriEmulator


@pytest.fixture
def cri_emulator_options() -> dict[str, Any]:
    """Keyword arguments for ``cri_emulator`` (see CriEmulator); override to change them."""
    return {}


@pytest.fixture
def cri_emulator(tmp_path: Path, cri_emulator_options: dict[str, Any]) -> Iterator[CriEmulator]:
    """A CRI emulator process for this test, answering on ``cri_emulator.endpoint``."""
    from kubeharness.testing import CriEmulator

    with CriEmulator(tmp_path / "cri", **cri_emulator_options) as emulator:
        yield emulator


@pytest.fixture
def cri_faults(cri_emulator: CriEmulator) -> Iterator[BlockingFaultControl]:
    """The fault rules of ``cri_emulator``, cleared after the test."""
    yield cri_emulator.control
    with contextlib.suppress(OSError):  # the test may have stopped or crashed the emulator
        cri_emulator.control.clear()
