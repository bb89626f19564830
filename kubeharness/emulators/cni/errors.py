"""The one error the plugin raises: a CNI error result with a spec code, printed on stdout by ``main``.

Codes below 100 are the spec's well-known ones; the plugin's own codes are listed here.
"""

from __future__ import annotations

INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
LIMITED_CONNECTIVITY = 51

ALREADY_ATTACHED = 100
"""ADD for a (container, interface) pair that already has an attachment (the spec demands an error)."""
CHECK_MISMATCH = 101
"""CHECK found the attachment different from what it should be (address or interface missing)."""
NO_ADDRESSES = 102
"""A range set has no free address left."""
KERNEL_FAILURE = 103
"""Real mode: an iproute2 command failed."""
INTERNAL = 104
"""A bug in the plugin; the traceback goes to stderr."""


class PluginError(Exception):
    """A CNI error result: ``code``, a short ``msg`` and optional ``details``."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def document(self, cni_version: str) -> dict[str, object]:
        out: dict[str, object] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out
