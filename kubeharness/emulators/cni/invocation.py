"""The ``CNI_*`` environment of one invocation, checked as the spec says (a problem is error code 4)."""

from __future__ import annotations

from collections.abc import Mapping

from kubeharness.emulators.cni.errors import INVALID_ENVIRONMENT, PluginError

COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION")

_REQUIRED = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "STATUS": ("CNI_PATH",),
    "GC": ("CNI_PATH",),
    "VERSION": (),
}
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


class Invocation:
    """What the runtime said in the environment: the command, the attachment and ``CNI_ARGS``."""

    __slots__ = ("args", "command", "container_id", "ifname", "netns", "path")

    def __init__(self, command: str, container_id: str, netns: str, ifname: str, args: dict[str, str],
                 path: str) -> None:
        self.command = command
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.args = args
        self.path = path

    @property
    def key(self) -> str:
        """The attachment's key in the store (container ids and interface names contain no ``/``)."""
        return f"{self.container_id}/{self.ifname}"


def parse_args(text: str) -> dict[str, str]:
    """``CNI_ARGS`` (``K=V;K2=V2``) as a dict; a pair without ``=`` is an error."""
    out: dict[str, str] = {}
    for pair in text.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise PluginError(INVALID_ENVIRONMENT, "invalid CNI_ARGS", f"{pair!r} is not KEY=VALUE")
        out[key] = value
    return out


def check_ifname(name: str) -> None:
    """Interface names as Linux takes them: 1-15 bytes, not . or .., no /, : or whitespace."""
    if not name or name in (".", ".."):
        raise PluginError(INVALID_ENVIRONMENT, "invalid CNI_IFNAME", f"{name!r} is not an interface name")
    if len(name.encode()) > 15:
        raise PluginError(INVALID_ENVIRONMENT, "invalid CNI_IFNAME", f"{name!r} is longer than 15 bytes")
    if any(c in "/:" or c.isspace() for c in name):
        raise PluginError(INVALID_ENVIRONMENT, "invalid CNI_IFNAME", f"{name!r} contains /, : or whitespace")


def from_environment(environ: Mapping[str, str]) -> Invocation:
    """The invocation the environment describes; raises :class:`PluginError` (code 4) when it is invalid."""
    command = environ.get("CNI_COMMAND", "")
    if not command:
        raise PluginError(INVALID_ENVIRONMENT, "required environment variable CNI_COMMAND missing")
    if command not in COMMANDS:
        raise PluginError(INVALID_ENVIRONMENT, f"unknown CNI_COMMAND {command!r}",
                          f"expected one of {', '.join(COMMANDS)}")
    missing = [name for name in _REQUIRED[command] if not environ.get(name)]
    if missing:
        raise PluginError(INVALID_ENVIRONMENT, f"required environment variables missing: {', '.join(missing)}")
    container_id = environ.get("CNI_CONTAINERID", "")
    if container_id and not set(container_id) <= _ID_CHARS:
        raise PluginError(INVALID_ENVIRONMENT, "invalid CNI_CONTAINERID",
                          f"{container_id!r}: only letters, digits, '_', '.' and '-' are allowed")
    ifname = environ.get("CNI_IFNAME", "")
    if ifname or command in ("ADD", "DEL", "CHECK"):
        check_ifname(ifname)
    return Invocation(command, container_id, environ.get("CNI_NETNS", ""), ifname,
                      parse_args(environ.get("CNI_ARGS", "")), environ.get("CNI_PATH", ""))
