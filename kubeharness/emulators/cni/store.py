"""The allocation store of one network: ``<dataDir>/<network>/state.json``, locked and written atomically.

Every invocation that reads or changes allocations holds an exclusive ``flock`` on ``lock`` in the same
directory for the whole read-modify-write, so any number of concurrent invocations serialise. A change
is written to a temporary file in the directory, fsynced and renamed over ``state.json``: a crash at
any point leaves either the old or the new state, never a torn one. A temporary file left by a crash is
removed by the next writer.

The state: ``{"version": 1, "attachments": {"<container>/<ifname>": {...}}, "last": {"<set>": "<ip>"}}``
where an attachment records ``containerID``, ``ifname``, ``netns``, ``ips`` (``address/prefix``, one per
range set), ``gateways``, ``sets`` (the range set index of each address) and, in real mode, ``hostIf``.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable

from kubeharness import fsafe
from kubeharness.emulators.cni.errors import IO_FAILURE, PluginError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

STATE = "state.json"
LOCK = "lock"
_TMP_PREFIX = ".state.tmp."


def empty_state() -> dict[str, Any]:
    return {"version": 1, "attachments": {}, "last": {}}


class Store:
    """``with Store(dir) as store:`` holds the lock; ``store.state`` is the loaded state, ``commit`` saves it.

    ``before_rename`` runs after the new state is durable in its temporary file and before the rename: the
    worst moment to die, where the fault plan's ``crash`` strikes.
    """

    def __init__(self, directory: str, before_rename: Callable[[], None] | None = None) -> None:
        self.directory = directory
        self.before_rename = before_rename
        self.state: dict[str, Any] = empty_state()
        self._lock_fd = -1

    def __enter__(self) -> Store:
        try:
            # the data dir and the network's directory: ours or refused, before anything is touched
            fsafe.check_owner(os.path.dirname(self.directory), "ipam.dataDir")
            fsafe.make_owned_dir(self.directory, "the network's store directory", 0o755)
            self._lock_fd = os.open(os.path.join(self.directory, LOCK),
                                    os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        except fsafe.FsafeError as err:
            raise PluginError(IO_FAILURE, f"refusing the store in {self.directory}", err.message) from None
        except OSError as err:
            self.__exit__()
            raise PluginError(IO_FAILURE, f"cannot lock the store in {self.directory}", str(err)) from None
        self.state = self._load()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = -1

    def _load(self) -> dict[str, Any]:
        path = os.path.join(self.directory, STATE)
        try:
            with open(path, "rb") as file:
                data = file.read()
        except FileNotFoundError:
            return empty_state()
        except OSError as err:
            raise PluginError(IO_FAILURE, f"cannot read {path}", str(err)) from None
        try:
            state = json.loads(data)
            if not isinstance(state, dict) or state.get("version") != 1:
                raise ValueError("not a version 1 store")
            state.setdefault("attachments", {})
            state.setdefault("last", {})
        except ValueError as err:
            raise PluginError(IO_FAILURE, f"the store {path} is unreadable", str(err)) from None
        return state

    def commit(self) -> None:
        """Make ``self.state`` the stored state, atomically."""
        if self._lock_fd < 0:
            raise RuntimeError("Store.commit outside its with block")
        data = json.dumps(self.state, separators=(",", ":"), sort_keys=True).encode()
        tmp = os.path.join(self.directory, f"{_TMP_PREFIX}{os.getpid()}")
        try:
            for name in os.listdir(self.directory):
                if name.startswith(_TMP_PREFIX):  # left by a writer that died: we hold the lock
                    os.unlink(os.path.join(self.directory, name))
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            if self.before_rename is not None:
                self.before_rename()
            os.replace(tmp, os.path.join(self.directory, STATE))
        except OSError as err:
            raise PluginError(IO_FAILURE, f"cannot write the store in {self.directory}", str(err)) from None


def taken(state: dict[str, Any]) -> set[str]:
    """Every address (without prefix) some attachment holds."""
    return {ip.split("/", 1)[0] for att in state["attachments"].values() for ip in att.get("ips", ())}
