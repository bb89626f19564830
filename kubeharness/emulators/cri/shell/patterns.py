"""Shell patterns (``*``, ``?``, ``[...]``) for ``case``, ``${x#pat}`` and pathname globbing.

A pattern is held as text in which quoted characters are backslash-escaped, the way the shell itself
keeps them, and is compiled to a regular expression once per distinct text.
"""

from __future__ import annotations

import re

_cache: dict[str, re.Pattern[str]] = {}
_SPECIAL = frozenset("*?[\\")


def escape(text: str) -> str:
    """``text`` as a pattern that matches only itself."""
    if not any(c in _SPECIAL for c in text):
        return text
    return "".join("\\" + c if c in _SPECIAL else c for c in text)


def has_magic(pattern: str) -> bool:
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if c in "*?[":
            return True
        i += 1
    return False


def unescape(pattern: str) -> str:
    return re.sub(r"\\(.)", r"\1", pattern, flags=re.S)


def to_regex(pattern: str, greedy: bool = True) -> str:
    out: list[str] = []
    i, n = 0, len(pattern)
    star = ".*" if greedy else ".*?"
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            out.append(re.escape(pattern[i + 1]))
            i += 2
        elif c == "*":
            out.append(star)
            i += 1
        elif c == "?":
            out.append(".")
            i += 1
        elif c == "[":
            j = i + 1
            if j < n and pattern[j] in "!^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append(re.escape("["))
                i += 1
                continue
            body = pattern[i + 1 : j]
            negate = body[:1] in ("!", "^")
            if negate:
                body = body[1:]
            body = body.replace("\\", "\\\\").replace("^", "\\^")
            for name, cls in (
                ("[:alpha:]", "a-zA-Z"),
                ("[:digit:]", "0-9"),
                ("[:alnum:]", "a-zA-Z0-9"),
                ("[:space:]", " \\t\\n\\r\\f\\v"),
                ("[:upper:]", "A-Z"),
                ("[:lower:]", "a-z"),
            ):
                body = body.replace(name, cls)
            out.append(("[^" if negate else "[") + body + "]")
            i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def compile_pattern(pattern: str) -> re.Pattern[str]:
    compiled = _cache.get(pattern)
    if compiled is None:
        if len(_cache) > 4096:
            _cache.clear()
        compiled = re.compile(to_regex(pattern), re.S)
        _cache[pattern] = compiled
    return compiled


def match(pattern: str, text: str) -> bool:
    """Whether ``text`` matches the whole ``pattern``."""
    return compile_pattern(pattern).fullmatch(text) is not None


def remove_affix(value: str, pattern: str, op: str) -> str:
    """``${v#p}``, ``${v##p}``, ``${v%p}``, ``${v%%p}``."""
    regex = compile_pattern(pattern)
    n = len(value)
    if op in ("#", "##"):
        ends = range(0, n + 1) if op == "#" else range(n, -1, -1)
        for end in ends:
            if regex.fullmatch(value, 0, end):
                return value[end:]
        return value
    starts = range(n, -1, -1) if op == "%" else range(0, n + 1)
    for start in starts:
        if regex.fullmatch(value, start, n):
            return value[:start]
    return value


def replace(value: str, pattern: str, repl: str, every: bool) -> str:
    """``${v/p/r}`` and ``${v//p/r}`` (longest match at each position)."""
    if not pattern:
        return value
    anchor = ""
    if pattern.startswith("#") or pattern.startswith("%"):
        anchor, pattern = pattern[0], pattern[1:]
    regex = re.compile(to_regex(pattern), re.S)
    if anchor == "#":
        m = regex.match(value)
        return repl + value[m.end() :] if m else value
    if anchor == "%":
        for start in range(len(value) + 1):
            if regex.fullmatch(value, start):
                return value[:start] + repl
        return value
    out: list[str] = []
    i = 0
    while i <= len(value):
        m = regex.match(value, i)
        if m and m.end() > i:
            out.append(repl)
            i = m.end()
            if not every:
                out.append(value[i:])
                return "".join(out)
        else:
            if i < len(value):
                out.append(value[i])
            i += 1
    return "".join(out)
