"""Running one CNI plugin executable, as libcni does: config on stdin, CNI_* in the environment.

The plugin runs as an asyncio subprocess (the emulator's loop never blocks on it). Its error answer
(``{"code": N, "msg": ..., "details": ...}`` on stdout with a non-zero exit) becomes the message libcni
would give, ``msg; details``; a plugin that fails without such an answer is reported in libcni's
words ("netplugin failed: ..."), so the errors a client sees read like containerd's.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
import os
import shutil
import sys
from dataclasses import dataclass
from typing import Any


class PluginError(Exception):
    """A plugin could not be found, failed, or answered something that is not a CNI result."""


@dataclass(frozen=True)
class Invocation:
    """Everything a plugin is called with besides its config (libcni's RuntimeConf)."""

    container_id: str
    netns: str
    ifname: str
    args: tuple[tuple[str, str], ...]  # CNI_ARGS, in order
    path: tuple[str, ...]  # CNI_PATH: where plugins (and their delegates, such as IPAM) are found

    def environment(self, command: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            CNI_COMMAND=command,
            CNI_CONTAINERID=self.container_id,
            CNI_NETNS=self.netns,
            CNI_IFNAME=self.ifname,
            CNI_ARGS=";".join(f"{k}={v}" for k, v in self.args),
            CNI_PATH=":".join(self.path),
        )
        return env


def find_plugin(plugin_type: str, path: tuple[str, ...]) -> str:
    for directory in path:
        candidate = os.path.join(directory, plugin_type)
        if "/" not in plugin_type and os.path.isfile(candidate):
            return candidate
    shown = "[" + " ".join(path) + "]"  # how Go prints the list of directories
    raise PluginError(f'failed to find plugin "{plugin_type}" in path {shown}')


def _go_quote(data: bytes) -> str:
    return json.dumps(data.decode(errors="replace"))


def plugin_error(returncode: int, stdout: bytes, stderr: bytes) -> str:
    """The message libcni makes of a failed plugin run."""
    status = f"exit status {returncode}" if returncode >= 0 else f"signal: {-returncode}"
    if not stdout.strip():
        if not stderr:
            return f"netplugin failed with no error message: {status}"
        return f"netplugin failed: {_go_quote(stderr)}: {status}"
    try:
        answer = json.loads(stdout)
        if not isinstance(answer, dict):
            raise ValueError("not an object")
    except ValueError as err:
        return f"netplugin failed but error parsing its diagnostic message {_go_quote(stdout)}: {err}"
    msg = str(answer.get("msg", ""))
    details = str(answer.get("details", "") or "")
    return f"{msg}; {details}" if details else msg


@functools.cache
def _dying_with_us() -> tuple[str, ...]:
    """The command prefix that makes a plugin die with the emulator (SIGKILL when its parent dies, util-linux's
    ``setpriv``, Essential on Debian): a plugin must not outlive a killed emulator and finish an ADD after the
    restarted one has undone the setup. Nothing where ``setpriv`` is missing. (The system call from Python,
    between fork and exec in a threaded process, crashed the child now and then.)"""
    setpriv = shutil.which("setpriv")
    if setpriv is None or not sys.platform.startswith("linux"):
        return ()
    return (setpriv, "--pdeathsig", "KILL", "--")


async def run_plugin(executable: str, command: str, config: dict[str, Any], call: Invocation) -> bytes:
    """Run ``executable`` for ``command`` (ADD, DEL, CHECK); its stdout when it succeeds."""
    stdin = json.dumps(config).encode()
    if not os.access(executable, os.X_OK):  # as the exec itself would fail, before setpriv hides it
        raise PluginError(f"netplugin failed with no error message: {os.strerror(errno.EACCES)}")
    try:
        process = await asyncio.create_subprocess_exec(
            *_dying_with_us(),
            executable,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=call.environment(command),
            start_new_session=True,
        )
    except OSError as err:
        raise PluginError(f"netplugin failed with no error message: {err.strerror or err}") from None
    try:
        stdout, stderr = await process.communicate(stdin)
    except BaseException:  # cancelled: the plugin must not outlive the call that started it
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        with contextlib.suppress(Exception):
            await asyncio.shield(process.wait())
        raise
    if process.returncode != 0:
        raise PluginError(plugin_error(process.returncode or 0, stdout, stderr))
    return stdout


def parse_result(stdout: bytes) -> dict[str, Any]:
    """An ADD answer as a JSON object."""
    try:
        result = json.loads(stdout)
    except ValueError as err:
        raise PluginError(f"decoding version from network config: {err}") from None
    if not isinstance(result, dict):
        raise PluginError("decoding version from network config: the result is not a JSON object")
    return result
