"""The fault control socket: load, replace, list and clear rules and read the fired-fault log at run time.

Each emulator serves its engine on a unix socket of its own, readable and writable by its owner only
(0600). The protocol is one JSON object per line each way: a request ``{"op": ..., ...}`` and its answer
``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``. Operations:

- ``list``: the rules in force (as plan dictionaries);
- ``load`` with ``plan`` (YAML text): add its rules after the ones in force;
- ``replace`` with ``plan``: put this plan in force instead;
- ``clear``: no rules (the fired-fault log stays);
- ``fired``: the fired-fault log, oldest first.

Changing the rules starts their counters afresh. A bad plan is refused with the validation error (naming
the line) and the rules in force stay as they were. :class:`FaultControl` is the client for asyncio code,
:class:`BlockingFaultControl` the same for code without an event loop; both take a plan as YAML text or as
Python data (validated on the client first, so that errors name the path such as ``rules[0].method``).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from kubeharness import fsafe
from kubeharness.errors import FailedPrecondition, InvalidArgument, KubeharnessError, Unavailable
from kubeharness.faults.engine import FaultEngine
from kubeharness.faults.plan import FaultPlan, load_plan, plan_from_dict

MAX_REQUEST_BYTES = 4 * 1024 * 1024


def _combined(current: FaultPlan, extra: FaultPlan) -> FaultPlan:
    names = {rule.name for rule in current.rules}
    clash = sorted(names & {rule.name for rule in extra.rules})
    if clash:
        raise InvalidArgument(f"rule(s) {', '.join(clash)} are already loaded: replace the plan, or rename them")
    return FaultPlan(rules=(*current.rules, *extra.rules))


def handle(engine: FaultEngine, request: dict[str, Any]) -> dict[str, Any]:
    """One control request against ``engine``; the answer to send back."""
    op = request.get("op")
    if op == "list":
        return {"ok": True, "rules": [rule.as_dict() for rule in engine.rules()]}
    if op == "fired":
        return {"ok": True, "fired": [entry.as_dict() for entry in engine.fired()]}
    if op == "clear":
        engine.clear()
        return {"ok": True, "rules": []}
    if op in ("load", "replace"):
        text = request.get("plan")
        if not isinstance(text, str):
            raise InvalidArgument(f"{op} needs 'plan': the plan's YAML text")
        plan = load_plan(text, source=str(request.get("source") or "<control>"))
        engine.replace(plan if op == "replace" else _combined(engine.plan, plan))
        return {"ok": True, "rules": [rule.as_dict() for rule in engine.rules()]}
    raise InvalidArgument(f"unknown operation {op!r}: list, load, replace, clear or fired")


class ControlServer:
    """Serves ``engine`` on the unix socket ``path`` (owner-only)."""

    def __init__(self, engine: FaultEngine, path: Path) -> None:
        self.engine = engine
        self.path = path
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        """Listen on :attr:`path`, 0600 from its first moment (:func:`kubeharness.fsafe.serve_unix_socket`;
        the umask is never touched: it belongs to the whole process). A live server's socket or another
        file at the path is refused (FAILED_PRECONDITION), never replaced."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            fsafe.serve_unix_socket(str(self.path), sock.bind)
        except fsafe.FsafeError as err:
            sock.close()
            raise FailedPrecondition(f"fault control socket: {err.message}") from None
        except BaseException:
            sock.close()
            raise
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_REQUEST_BYTES)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    request = json.loads(line)
                    if not isinstance(request, dict):
                        raise InvalidArgument("a request is a JSON object")
                    answer = handle(self.engine, request)
                except KubeharnessError as err:
                    answer = {"ok": False, "error": err.message}
                except ValueError as err:
                    answer = {"ok": False, "error": f"not JSON: {err}"}
                writer.write((json.dumps(answer) + "\n").encode())
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self.path.unlink(missing_ok=True)


PlanSource = str | Mapping[str, Any]
"""A plan for ``load``/``replace``: YAML text, or the same structure as Python data."""


def plan_text(plan: PlanSource) -> str:
    """The YAML text to send for ``plan``; Python data is validated here first, so errors name its path."""
    if isinstance(plan, str):
        return plan
    plan_from_dict(plan)
    return yaml.safe_dump(dict(plan), sort_keys=False)


def encode_request(op: str, **fields: Any) -> bytes:
    """One request line of the protocol."""
    return (json.dumps({"op": op, **fields}) + "\n").encode()


def decode_answer(line: bytes) -> dict[str, Any]:
    """The answer in ``line``; a refusal raises InvalidArgument with the server's words."""
    if not line:
        raise Unavailable("the fault control socket closed the connection without answering")
    answer = json.loads(line)
    if not isinstance(answer, dict) or not answer.get("ok"):
        error = answer.get("error") if isinstance(answer, dict) else None
        raise InvalidArgument(str(error or "the control socket refused the request"))
    return answer


class FaultControl:
    """Async client of a control socket: ``await FaultControl(path).rules()``.

    Connection problems raise ``OSError`` (the emulator is not running, or not there yet); a request the
    emulator refuses (such as a bad plan) raises InvalidArgument with its reason.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        reader, writer = await asyncio.open_unix_connection(str(self.path), limit=MAX_REQUEST_BYTES)
        try:
            writer.write(encode_request(op, **fields))
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
        return decode_answer(line)

    async def rules(self) -> list[dict[str, Any]]:
        return list((await self.call("list"))["rules"])

    async def load(self, plan: PlanSource, source: str | None = None) -> list[dict[str, Any]]:
        return list((await self.call("load", plan=plan_text(plan), source=source))["rules"])

    async def replace(self, plan: PlanSource, source: str | None = None) -> list[dict[str, Any]]:
        return list((await self.call("replace", plan=plan_text(plan), source=source))["rules"])

    async def clear(self) -> None:
        await self.call("clear")

    async def fired(self) -> list[dict[str, Any]]:
        return list((await self.call("fired"))["fired"])


class BlockingFaultControl:
    """The same client for code without an event loop (plain tests, scripts): ``BlockingFaultControl(path).rules()``.

    Each call waits at most ``timeout`` seconds (``TimeoutError``, an ``OSError``).
    """

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            sock.connect(str(self.path))
            sock.sendall(encode_request(op, **fields))
            with sock.makefile("rb") as answer:
                line = answer.readline()
        return decode_answer(line)

    def rules(self) -> list[dict[str, Any]]:
        return list(self.call("list")["rules"])

    def load(self, plan: PlanSource, source: str | None = None) -> list[dict[str, Any]]:
        return list(self.call("load", plan=plan_text(plan), source=source)["rules"])

    def replace(self, plan: PlanSource, source: str | None = None) -> list[dict[str, Any]]:
        return list(self.call("replace", plan=plan_text(plan), source=source)["rules"])

    def clear(self) -> None:
        self.call("clear")

    def fired(self) -> list[dict[str, Any]]:
        return list(self.call("fired")["fired"])
