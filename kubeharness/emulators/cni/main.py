"""The ``kubeharness-cni`` entry point: one CNI command per process, result or error JSON on stdout.

``run`` does the work from an environment and the stdin bytes and returns the exit status and the
document to print; ``main`` wires it to the process. A fault the plan decides is carried out here:
``cni_error`` answers before any work, ``cni_hang`` never answers, ``delay`` sleeps before or after the
work, ``cni_partial`` does the work and then answers with the error (ADD leaves its address allocated),
``crash`` dies without answering, at the worst moment if the command writes its store: after the new
state is durable in a temporary file and before it replaces the old one.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping

from kubeharness.emulators.cni.errors import INCOMPATIBLE_VERSION, INTERNAL, IO_FAILURE, PluginError
from kubeharness.emulators.cni.invocation import Invocation, from_environment
from kubeharness.emulators.cni.netconf import LATEST_VERSION, SUPPORTED_VERSIONS, NetConf, decode, version_key

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from kubeharness.faults.engine import Decision

Sleep = Callable[[float], None]


class _Fault:
    """Carries out a fault decision around the command's work."""

    def __init__(self, decision: Decision | None, sleep: Sleep) -> None:
        self.decision = decision
        self.sleep = sleep

    def before(self) -> None:
        if self.decision is None:
            return
        from kubeharness.faults.plan import CniError, CniHang, Delay

        action = self.decision.action
        if isinstance(action, CniError):
            raise PluginError(action.code, action.msg, action.details)
        if isinstance(action, CniHang):
            while True:
                self.sleep(3600)
        if isinstance(action, Delay) and action.when == "before":
            self.sleep(self.decision.delay_seconds or 0.0)

    def crash_now(self) -> None:
        """Die as the plan says, if it says so; used between the temporary write and the rename."""
        if self.decision is None:
            return
        from kubeharness.faults.plan import Crash

        action = self.decision.action
        if isinstance(action, Crash):
            sys.stdout.flush()
            if action.how == "sigkill":
                import signal

                os.kill(os.getpid(), signal.SIGKILL)
            os._exit(action.exit_code)

    def after(self) -> None:
        if self.decision is None:
            return
        from kubeharness.faults.plan import CniPartial, Delay

        action = self.decision.action
        self.crash_now()
        if isinstance(action, Delay) and action.when == "after":
            self.sleep(self.decision.delay_seconds or 0.0)
        if isinstance(action, CniPartial):
            raise PluginError(action.code, action.msg, action.details)


def _decide(inv: Invocation, conf: NetConf | None) -> Decision | None:
    if conf is None or not conf.faults.get("plan"):
        return None
    from kubeharness.emulators.cni import faults

    return faults.decide(inv, conf)


def _version(inv: Invocation, stdin: bytes, sleep: Sleep) -> dict[str, Any]:
    conf = None
    try:  # VERSION needs no configuration; one that names a fault plan gets its VERSION faults
        doc = decode(stdin)
        if isinstance(doc.get("faults"), dict):
            conf = NetConf(doc)
    except PluginError:
        conf = None
    fault = _Fault(_decide(inv, conf), sleep)
    fault.before()
    fault.after()
    return {"cniVersion": LATEST_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}


def _command(inv: Invocation, conf: NetConf, sleep: Sleep) -> dict[str, Any] | None:
    if inv.command in ("STATUS", "GC") and version_key(conf.version) < (1, 1, 0):
        raise PluginError(INCOMPATIBLE_VERSION, f"{inv.command} needs cniVersion 1.1.0 or later",
                          f"the configuration says {conf.version}")
    fault = _Fault(_decide(inv, conf), sleep)
    fault.before()
    from kubeharness.emulators.cni import commands

    out: dict[str, Any] | None = None
    if inv.command == "ADD":
        out = commands.add(inv, conf, fault.crash_now)
    elif inv.command == "DEL":
        commands.delete(inv, conf, fault.crash_now)
    elif inv.command == "CHECK":
        commands.check(inv, conf)
    elif inv.command == "STATUS":
        commands.status(inv, conf)
    else:
        commands.gc(inv, conf, fault.crash_now)
    fault.after()
    return out


def run(environ: Mapping[str, str], stdin: bytes, sleep: Sleep = time.sleep) -> tuple[int, dict[str, Any] | None]:
    """Exit status and the document to print (None: print nothing) for one invocation."""
    version = LATEST_VERSION
    try:
        inv = from_environment(dict(environ))
        if inv.command == "VERSION":
            return 0, _version(inv, stdin, sleep)
        doc = decode(stdin)
        if doc.get("cniVersion") in SUPPORTED_VERSIONS:
            version = str(doc["cniVersion"])
        return 0, _command(inv, NetConf(doc), sleep)
    except PluginError as err:
        return 1, err.document(version)
    except OSError as err:
        return 1, PluginError(IO_FAILURE, "I/O failure", str(err)).document(version)
    except Exception as err:  # a bug: the runtime gets an error result, the traceback goes to stderr
        import traceback

        traceback.print_exc()
        return 1, PluginError(INTERNAL, "internal error in kubeharness-cni", repr(err)).document(version)


def respond(environ: Mapping[str, str], stdin: bytes) -> int:
    """One invocation as a process answers it: the document on stdout, the exit status returned.

    ``main`` calls it, and so does each child of the fork server (``forkserver``), so that the fast path
    prints exactly what the plugin prints.
    """
    status, doc = run(environ, stdin)
    if doc is not None:
        sys.stdout.write(json.dumps(doc, indent=4) + "\n")
        sys.stdout.flush()
    return status


def main() -> int:
    stdin = b"" if sys.stdin is None else sys.stdin.buffer.read()
    return respond(os.environ, stdin)


if __name__ == "__main__":
    sys.exit(main())
