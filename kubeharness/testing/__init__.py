"""For users' own test suites: a CRI emulator process to test against, its fault control, and pytest fixtures.

:class:`CriEmulator` starts ``kubeharness cri serve`` as a subprocess and waits until it answers;
``emulator.control`` (:class:`BlockingFaultControl`) and ``emulator.async_control`` (:class:`FaultControl`)
change its fault rules at run time. Installing kubeharness registers the pytest plugin
:mod:`kubeharness.testing.pytest_plugin` with the fixtures ``cri_emulator``, ``cri_emulator_options`` and
``cri_faults``.
"""

from __future__ import annotations

from kubeharness.faults.control import BlockingFaultControl, FaultControl, PlanSource
from kubeharness.testing.emulator import CriEmulator, EmulatorError

__all__ = ["BlockingFaultControl", "CriEmulator", "EmulatorError", "FaultControl", "PlanSource"]
