"""What containerd's CRI plugin tells CNI plugins about a pod: CNI_ARGS and the capability arguments.

CNI_ARGS carries ``IgnoreUnknown=1`` and the pod's namespace, name, sandbox id and UID. Capability
arguments reach a plugin in its ``runtimeConfig`` only when its config declares the capability (libcni
filters them); containerd 1.6 offers these, under the key names and Go field names it uses:

- ``io.kubernetes.cri.pod-annotations``: the sandbox's annotations (always offered);
- ``portMappings``: the port mappings that have a host port (``HostPort``, ``ContainerPort``,
  ``Protocol`` in lower case, ``HostIP``);
- ``bandwidth``: from the ``kubernetes.io/ingress-bandwidth`` / ``egress-bandwidth`` annotations
  (bits per second, bursts unlimited);
- ``dns``: the sandbox's DNS config (``Servers``, ``Searches``, ``Options``).

containerd 1.6 offers no ``ipRanges`` (it renders a ``conf_template`` with the pod CIDR instead), so
neither does the emulator.
"""

from __future__ import annotations

import re
from typing import Any

from kubeharness.wire.cri import api_pb2 as cri

POD_ANNOTATIONS = "io.kubernetes.cri.pod-annotations"
INGRESS = "kubernetes.io/ingress-bandwidth"
EGRESS = "kubernetes.io/egress-bandwidth"
MAX_UINT32 = 2**32 - 1
MIN_BANDWIDTH = 1000  # kubelet's bounds for the annotations: 1 kbit .. 1 Pbit
MAX_BANDWIDTH = 10**15

_QUANTITY = re.compile(r"^([+-]?[0-9.]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_SUFFIX = {
    None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}


class CapabilityError(ValueError):
    """A pod setting that cannot become a capability argument (the sandbox then fails to start)."""


def cni_args(sandbox_id: str, cfg: cri.PodSandboxConfig) -> tuple[tuple[str, str], ...]:
    meta = cfg.metadata
    return (
        ("IgnoreUnknown", "1"),
        ("K8S_POD_NAMESPACE", meta.namespace),
        ("K8S_POD_NAME", meta.name),
        ("K8S_POD_INFRA_CONTAINER_ID", sandbox_id),
        ("K8S_POD_UID", meta.uid),
    )


def parse_quantity(text: str) -> int:
    """A Kubernetes resource quantity such as ``10M`` or ``1Gi``, rounded up to a whole number."""
    match = _QUANTITY.match(text.strip())
    if not match:
        raise CapabilityError(f"quantities must match the regular expression '{_QUANTITY.pattern}'")
    try:
        value = float(match[1]) * _SUFFIX[match[2]]
    except ValueError:
        raise CapabilityError(f"invalid quantity {text!r}") from None
    whole = int(value)
    return whole if whole == value else whole + 1


def _bandwidth(annotations: dict[str, str]) -> dict[str, int] | None:
    rates: dict[str, int] = {}
    for key, name in ((INGRESS, "Ingress"), (EGRESS, "Egress")):
        if key not in annotations:
            continue
        try:
            rate = parse_quantity(annotations[key])
        except CapabilityError as err:
            raise CapabilityError(f"reading pod bandwidth annotations: failed to parse {key!r}: {err}") from None
        if rate < MIN_BANDWIDTH:
            raise CapabilityError("reading pod bandwidth annotations: resource is unreasonably small (< 1kbit)")
        if rate > MAX_BANDWIDTH:
            raise CapabilityError("reading pod bandwidth annotations: resource is unreasonably large (> 1Pbit)")
        rates[f"{name}Rate"] = rate
        rates[f"{name}Burst"] = MAX_UINT32
    if not rates:
        return None
    return {k: rates.get(k, 0) for k in ("IngressRate", "IngressBurst", "EgressRate", "EgressBurst")}


def capability_args(cfg: cri.PodSandboxConfig) -> dict[str, Any]:
    """The capability arguments containerd offers for a sandbox."""
    args: dict[str, Any] = {POD_ANNOTATIONS: dict(cfg.annotations)}
    mappings = [
        {
            "HostPort": m.host_port,
            "ContainerPort": m.container_port,
            "Protocol": cri.Protocol.Name(m.protocol).lower(),
            "HostIP": m.host_ip,
        }
        for m in cfg.port_mappings
        if m.host_port > 0
    ]
    if mappings:
        args["portMappings"] = mappings
    bandwidth = _bandwidth(dict(cfg.annotations))
    if bandwidth is not None:
        args["bandwidth"] = bandwidth
    if cfg.HasField("dns_config"):
        dns = cfg.dns_config
        args["dns"] = {"Servers": list(dns.servers), "Searches": list(dns.searches), "Options": list(dns.options)}
    return args


def runtime_config(plugin: dict[str, Any], capability_arguments: dict[str, Any]) -> dict[str, Any]:
    """The ``runtimeConfig`` one plugin gets: the arguments for the capabilities it declares."""
    declared = plugin.get("capabilities")
    if not isinstance(declared, dict):
        return {}
    return {k: v for k, v in capability_arguments.items() if declared.get(k) is True}
