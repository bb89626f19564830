"""Crash torture (issue 18): the CRI emulator, the CSI plugin, the CNI plugin's store and the agent SIGKILLed
at seeded random moments dozens of times, restarted on the same state each time, and checked afterwards:
everything acknowledged is there, nothing removed came back, nothing is there twice, nothing leaked.

``KUBEHARNESS_TORTURE_KILLS`` sets the kills per run (default 30); each run prints and records
(``record_property``) how many kills it survived.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from kubeharness.testing.emulator import CriEmulator
from kubeharness.testing.torture import Torture, TortureReport
from kubeharness.testing.torture_cri import CriWorkload

KILLS = int(os.environ.get("KUBEHARNESS_TORTURE_KILLS", "30"))
SEED = int(os.environ.get("KUBEHARNESS_TORTURE_SEED", "18"))
WORKERS = 8


def survived(record_property: Callable[[str, object], None], what: str, report: TortureReport) -> None:
    print(f"\ntorture {what}: {report.summary()}")
    record_property(f"torture_{what}_kills", report.kills)
    record_property(f"torture_{what}_acknowledged", report.acknowledged)
    assert report.problems == [], "\n".join(report.problems)
    assert report.kills == KILLS


async def test_cri_emulator_keeps_every_acknowledged_change_across_kills(
        tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    emulator = CriEmulator(tmp_path, start_timeout=60.0)
    async with emulator:
        torture = Torture(emulator.kill, emulator.start, kills=KILLS, seed=SEED)
        workload = CriWorkload(torture, emulator.endpoint)
        try:
            await workload.prepare()
            report = await torture.run([workload.worker(i) for i in range(WORKERS)], workload.check)
        finally:
            await workload.close()
    survived(record_property, "cri", report)
