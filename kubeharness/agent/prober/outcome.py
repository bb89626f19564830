"""What one probe run gives: a result (kubelet's ``probe.Result``) and the output it reports.

``WARNING`` counts as success (kubelet records a ``ProbeWarning`` event, for instance for an HTTP redirect
to another host that it does not follow); ``UNKNOWN`` is a probe that could not run and is thrown away.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ProbeResult(enum.Enum):
    SUCCESS = "success"
    WARNING = "warning"
    FAILURE = "failure"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Outcome:
    result: ProbeResult
    output: str = ""

    @property
    def succeeded(self) -> bool:
        return self.result in (ProbeResult.SUCCESS, ProbeResult.WARNING)


class ProbeError(Exception):
    """The probe could not be run at all (a named port the container lacks, an unknown handler): kubelet
    throws such a result away and keeps the previous one."""
