"""``$(VAR)`` references in commands, expanded as Kubernetes expands them (its forked ``expansion`` package).

``$(NAME)`` becomes NAME's value when the mapping has it and stays as written otherwise; ``$$`` is an escaped
``$``; any other ``$`` is kept. Kubelet expands container ``command`` and ``args`` with the container's
environment, and exec probe commands with the static part of it (values, not ``valueFrom``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from kubeharness.agent.pod.model import EnvVar


def expand(text: str, mapping: Mapping[str, str]) -> str:
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char != "$" or i + 1 >= n:
            out.append(char)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            end = text.find(")", i + 2)
            if end < 0:  # unclosed: kept as written
                out.append(text[i:])
                break
            name = text[i + 2:end]
            out.append(mapping[name] if name in mapping else text[i:end + 1])
            i = end + 1
        else:
            out.append(char)
            i += 1
    return "".join(out)


def static_env(env: Iterable[EnvVar]) -> dict[str, str]:
    """The environment's plain values, later definitions winning, as kubelet builds the mapping."""
    return {e.name: e.value for e in env}


def expand_command(command: Iterable[str], env: Iterable[EnvVar]) -> list[str]:
    mapping = static_env(env)
    return [expand(part, mapping) for part in command]
