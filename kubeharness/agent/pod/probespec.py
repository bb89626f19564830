"""Probes, lifecycle hooks, the termination message policy and the sidecar ``restartPolicy`` of a container,
validated as the API server validates them, into the model's types.

:func:`container_fields` is called by ``pod.validation`` for every container of a pod that
``pod.defaults`` has already defaulted (probe timeouts, periods and thresholds, httpGet path and scheme,
grpc service, terminationMessagePolicy). The rules are those of ``pkg/apis/core/validation/validation.go``
(``validateContainers``, ``validateInitContainers``, ``validateProbe`` and its liveness/readiness/startup
variants, ``validateHandler``, ``validateLifecycle`` and the per-handler checks), in the same order, so the
first problem found is the first one the API server would list, worded as it words it:

- a probe has exactly one handler of exec, httpGet, tcpSocket and grpc; a hook one of exec, httpGet and
  sleep (``may not specify more than 1 handler type`` on the second one, ``must specify a handler type``
  when there is none); keys of another kind of handler are unknown fields and ignored, as Go's decoder
  ignores them;
- exec needs a command; ports are 1..65535 or a port name (IANA_SVC_NAME: at most 15 of ``a-z0-9-``, a
  letter, no ``--``, no hyphen at either end); a name stays a ``str`` that the prober resolves against the
  container's ports; httpGet's scheme is ``HTTP`` or ``HTTPS`` and header names match ``[-A-Za-z0-9]+``;
  a grpc port is a number;
- initialDelaySeconds, timeoutSeconds, periodSeconds and the thresholds are not negative (after the
  defaulting of 0 to 1, 10, 1 and 3 that leaves at least 1 for all but the delay); a liveness or startup
  probe needs successThreshold 1; a probe's terminationGracePeriodSeconds is greater than 0 and not set
  on a readiness probe;
- sleep.seconds is between 0 and the pod's terminationGracePeriodSeconds (zero is allowed since the
  PodLifecycleSleepActionAllowZero gate went GA in 1.34);
- an init container's restartPolicy can only be ``Always`` (a sidecar); an app container's may not be set;
  probes and lifecycle are forbidden on init containers that are not sidecars;
- terminationMessagePolicy is ``File`` or ``FallbackToLogsOnError``.

``tcpSocket`` as a hook passes the API server's validation (it is kept for compatibility) and is read; kubelet's
hook runner cannot run it (``Cannot run handler``), and neither can ours, so a tcpSocket postStart kills the
container. One deliberate difference, refused with a clear error instead of run differently from kubelet:
``restartPolicyRules`` / an app container's ``restartPolicy`` (the ContainerRestartRules gate, beta since
1.35) are not implemented by the agent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubeharness.agent.pod.apifields import Invalid, forbidden, invalid, not_supported, required, typed, typed_int
from kubeharness.agent.pod.model import (
    TERMINATION_MESSAGE_FALLBACK,
    TERMINATION_MESSAGE_FILE,
    ExecAction,
    GRPCAction,
    HTTPGetAction,
    Lifecycle,
    Probe,
    SleepAction,
    TCPSocketAction,
)

LIVENESS, READINESS, STARTUP = "livenessProbe", "readinessProbe", "startupProbe"
PROBE_KINDS = (LIVENESS, READINESS, STARTUP)
SIDECAR_RESTART_POLICY = "Always"
HTTP_SCHEMES = ("HTTP", "HTTPS")
TERMINATION_MESSAGE_POLICIES = (TERMINATION_MESSAGE_FILE, TERMINATION_MESSAGE_FALLBACK)
# validateHandler's order: the second handler found in this order is the one reported
_HANDLER_ORDER = ("exec", "httpGet", "tcpSocket", "grpc", "sleep")
_PROBE_HANDLERS = frozenset({"exec", "httpGet", "tcpSocket", "grpc"})
_HOOK_HANDLERS = frozenset({"exec", "httpGet", "tcpSocket", "sleep"})  # tcpSocket: read, fails when run
_HEADER_NAME = re.compile(r"[-A-Za-z0-9]+")
_HEADER_PROBLEM = ("a valid HTTP header must consist of alphanumeric characters or '-' "
                   "(e.g. 'X-Header-Name', regex used for validation is '[-A-Za-z0-9]+')")
_NOT_SIDECAR = "may not be set for init containers without restartPolicy=Always"


@dataclass(frozen=True)
class ContainerFields:
    """What :func:`container_fields` reads, for the matching fields of ``model.Container``."""

    termination_message_policy: str = TERMINATION_MESSAGE_FILE
    liveness_probe: Probe | None = None
    readiness_probe: Probe | None = None
    startup_probe: Probe | None = None
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    restart_policy: str = ""


def container_fields(c: Mapping[str, Any], path: str, *, init: bool, grace_seconds: int) -> ContainerFields:
    """The probe, hook and policy fields of one defaulted container at ``path``; raises :class:`Invalid`.

    ``grace_seconds`` is the pod's terminationGracePeriodSeconds, the bound of a sleep hook.
    """
    policy = typed(c, "terminationMessagePolicy", str, path, TERMINATION_MESSAGE_FILE)
    if policy not in TERMINATION_MESSAGE_POLICIES:
        raise not_supported(f"{path}.terminationMessagePolicy", policy, TERMINATION_MESSAGE_POLICIES)
    restart = typed(c, "restartPolicy", str, path, None)
    if c.get("restartPolicyRules") is not None:
        raise Invalid(f"{path}.restartPolicyRules", "not supported: the agent does not implement container restart "
                      "rules (the ContainerRestartRules feature)")
    if init:
        if restart is not None and restart != SIDECAR_RESTART_POLICY:
            raise not_supported(f"{path}.restartPolicy", restart, (SIDECAR_RESTART_POLICY,))
        if restart is None:  # an ordinary init container: none of these
            for key in ("lifecycle", LIVENESS, READINESS, STARTUP):
                if c.get(key) is not None:
                    raise forbidden(f"{path}.{key}", _NOT_SIDECAR)
            return ContainerFields(termination_message_policy=policy)
    hooks = lifecycle(c.get("lifecycle"), f"{path}.lifecycle", grace_seconds)
    probes = {kind: probe(c.get(kind), f"{path}.{kind}", kind) for kind in PROBE_KINDS}
    if not init and restart is not None:
        raise forbidden(f"{path}.restartPolicy", "may not be set for non-init containers")
    return ContainerFields(termination_message_policy=policy, liveness_probe=probes[LIVENESS],
                           readiness_probe=probes[READINESS], startup_probe=probes[STARTUP], lifecycle=hooks,
                           restart_policy=restart or "")


def probe(raw: object, path: str, kind: str) -> Probe | None:
    """A defaulted probe of ``kind`` (livenessProbe, readinessProbe or startupProbe), or None when unset."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise Invalid(path, f"must be an object, got {raw!r}")
    action = _handler(raw, path, hook=False, grace_seconds=0)
    assert not isinstance(action, SleepAction)  # not among the probe handlers
    numbers = {}
    for key, default in (("initialDelaySeconds", 0), ("timeoutSeconds", 1), ("periodSeconds", 10),
                         ("successThreshold", 1), ("failureThreshold", 3)):
        value = typed_int(raw, key, path, default)
        assert value is not None
        if value < 0:
            raise invalid(f"{path}.{key}", value, "must be greater than or equal to 0")
        numbers[key] = value
    grace = typed_int(raw, "terminationGracePeriodSeconds", path, None, bits=64)
    if grace is not None and grace <= 0:
        raise invalid(f"{path}.terminationGracePeriodSeconds", grace, "must be greater than 0")
    if kind in (LIVENESS, STARTUP) and numbers["successThreshold"] != 1:
        raise invalid(f"{path}.successThreshold", numbers["successThreshold"], "must be 1")
    if kind == READINESS and grace is not None:
        raise invalid(f"{path}.terminationGracePeriodSeconds", grace, "must not be set for readinessProbes")
    return Probe(handler=action, initial_delay_seconds=numbers["initialDelaySeconds"],
                 timeout_seconds=numbers["timeoutSeconds"], period_seconds=numbers["periodSeconds"],
                 success_threshold=numbers["successThreshold"], failure_threshold=numbers["failureThreshold"],
                 termination_grace_period_seconds=grace)


def lifecycle(raw: object, path: str, grace_seconds: int) -> Lifecycle:
    """postStart and preStop of a container's ``lifecycle`` (unset: no hooks)."""
    if raw is None:
        return Lifecycle()
    if not isinstance(raw, dict):
        raise Invalid(path, f"must be an object, got {raw!r}")
    hooks: dict[str, ExecAction | HTTPGetAction | SleepAction | TCPSocketAction | None] = {}
    for key in ("postStart", "preStop"):
        hook = raw.get(key)
        if hook is None:
            hooks[key] = None
            continue
        if not isinstance(hook, dict):
            raise Invalid(f"{path}.{key}", f"must be an object, got {hook!r}")
        action = _handler(hook, f"{path}.{key}", hook=True, grace_seconds=grace_seconds)
        assert not isinstance(action, GRPCAction)  # not among the hook handlers
        hooks[key] = action
    return Lifecycle(post_start=hooks["postStart"], pre_stop=hooks["preStop"])


def port_name_problem(name: str) -> str | None:
    """The first reason ``name`` is not an IANA_SVC_NAME, in the API's words (IsValidPortName), or None."""
    if len(name) > 15:
        return "must be no more than 15 characters"
    if not re.fullmatch(r"[-a-z0-9]+", name):
        return "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"
    if not re.search(r"[a-z]", name):
        return "must contain at least one letter (a-z)"
    if "--" in name:
        return "must not contain consecutive hyphens"
    if name.startswith("-") or name.endswith("-"):
        return "must not begin or end with a hyphen"
    return None


# ---- handlers


Action = ExecAction | HTTPGetAction | TCPSocketAction | GRPCAction | SleepAction


def _handler(raw: Mapping[str, Any], path: str, *, hook: bool, grace_seconds: int) -> Action:
    allowed = _HOOK_HANDLERS if hook else _PROBE_HANDLERS
    found: Action | None = None
    for key in _HANDLER_ORDER:
        if key not in allowed or raw.get(key) is None:
            continue
        where = f"{path}.{key}"
        if found is not None:
            raise forbidden(where, "may not specify more than 1 handler type")
        spec = raw[key]
        if not isinstance(spec, dict):
            raise Invalid(where, f"must be an object, got {spec!r}")
        found = _action(key, spec, where, hook=hook, grace_seconds=grace_seconds)
    if found is None:
        raise required(path, "must specify a handler type")
    return found


def _action(key: str, spec: Mapping[str, Any], where: str, *, hook: bool, grace_seconds: int) -> Action:
    if key == "exec":
        command = typed(spec, "command", list, where, [])
        if not command:
            raise required(f"{where}.command")
        for i, part in enumerate(command):
            if not isinstance(part, str):
                raise Invalid(f"{where}.command[{i}]", f"must be a string, got {part!r}")
        return ExecAction(command=tuple(command))
    if key == "httpGet":
        path = typed(spec, "path", str, where, "")
        if not path:
            raise required(f"{where}.path")
        port = _port(spec.get("port"), f"{where}.port")
        scheme = typed(spec, "scheme", str, where, "HTTP")
        if scheme not in HTTP_SCHEMES:
            raise not_supported(f"{where}.scheme", scheme, HTTP_SCHEMES)
        return HTTPGetAction(port=port, path=path, host=typed(spec, "host", str, where, ""), scheme=scheme,
                             headers=_headers(spec, where))
    if key == "tcpSocket":
        port = _port(spec.get("port"), f"{where}.port")
        return TCPSocketAction(port=port, host=typed(spec, "host", str, where, ""))
    if key == "grpc":
        number = typed_int(spec, "port", where, 0)
        assert number is not None
        if not 1 <= number <= 65535:
            raise invalid(f"{where}.port", number, "must be between 1 and 65535, inclusive")
        return GRPCAction(port=number, service=typed(spec, "service", str, where, ""))
    # sleep, in a hook: grace_seconds is the pod's terminationGracePeriodSeconds
    seconds = typed_int(spec, "seconds", where, 0, bits=64)
    assert seconds is not None
    if not 0 <= seconds <= grace_seconds:
        raise invalid(where, seconds,
                      f"must be non-negative and less than terminationGracePeriodSeconds ({grace_seconds})")
    return SleepAction(seconds=seconds)


def _port(value: object, where: str) -> int | str:
    """An IntOrString port: absent is the number 0 (refused), as Go's zero value is."""
    if value is None:
        value = 0
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise Invalid(where, f"must be a port number or name, got {value!r}")
    if isinstance(value, int):
        if not 1 <= value <= 65535:
            raise invalid(where, value, "must be between 1 and 65535, inclusive")
        return value
    problem = port_name_problem(value)
    if problem:
        raise invalid(where, value, problem)
    return value


def _headers(spec: Mapping[str, Any], where: str) -> tuple[tuple[str, str], ...]:
    headers = []
    for i, header in enumerate(typed(spec, "httpHeaders", list, where, [])):
        if not isinstance(header, dict):
            raise Invalid(f"{where}.httpHeaders[{i}]", f"must be an object with name and value, got {header!r}")
        name = typed(header, "name", str, f"{where}.httpHeaders[{i}]", "")
        if not _HEADER_NAME.fullmatch(name):  # the API names the list, not the item
            raise invalid(f"{where}.httpHeaders", name, _HEADER_PROBLEM)
        headers.append((name, typed(header, "value", str, f"{where}.httpHeaders[{i}]", "")))
    return tuple(headers)
