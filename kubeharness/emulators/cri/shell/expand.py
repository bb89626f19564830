"""Word expansion: tilde, parameters, command substitution, arithmetic, field splitting, globbing.

Expansion is a generator because a command substitution runs commands that may wait on the clock
(``$(sleep 1; date)``). A word is expanded to segments (text, quoted); unquoted results of expansions
are split on IFS, and fields with unquoted ``*``/``?``/``[`` are matched against the container
filesystem (a pattern that matches nothing stays as written).
"""

from __future__ import annotations

import re
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from kubeharness.emulators.cri.shell import arith, patterns
from kubeharness.emulators.cri.shell.io import Block
from kubeharness.emulators.cri.shell.nodes import Arith, CmdSub, Lit, Param, Word
from kubeharness.emulators.cri.shell.vfs import VfsError

if TYPE_CHECKING:
    from kubeharness.emulators.cri.shell.interp import Shell

Gen = Generator[Block, Any, Any]
Seg = tuple[str, bool]  # (text, quoted)
DEFAULT_IFS = " \t\n"


class ExpansionError(Exception):
    """An expansion that makes a non-interactive shell exit (``${x?}``, bad arithmetic)."""


def ifs_split(value: str, ifs: str) -> tuple[list[str], bool, bool]:
    """Split ``value`` on ``ifs``: the pieces, and whether it began or ended with a separator."""
    if not value:
        return [], False, False
    if ifs == DEFAULT_IFS:
        return value.split(), value[0] in ifs, value[-1] in ifs
    if not ifs:
        return [value], False, False
    white = "".join(c for c in ifs if c in DEFAULT_IFS)
    other = "".join(c for c in ifs if c not in DEFAULT_IFS)
    lead, trail = value[0] in white, value[-1] in ifs
    stripped = value.strip(white)
    if not stripped:
        return [], lead, trail
    regex = _split_cache.get(ifs)
    if regex is None:
        w, o = re.escape(white), re.escape(other)
        pad = f"[{w}]*" if white else ""
        alternatives = ([f"{pad}[{o}]{pad}"] if other else []) + ([f"[{w}]+"] if white else [])
        regex = _split_cache[ifs] = re.compile("|".join(alternatives))
    pieces = regex.split(stripped)
    if len(pieces) > 1 and pieces[-1] == "" and stripped[-1] in other:
        pieces.pop()
    return pieces, lead, trail


_split_cache: dict[str, re.Pattern[str]] = {}


class _Fields:
    """Fields under construction: each a list of segments."""

    def __init__(self) -> None:
        self.fields: list[list[Seg]] = []
        self.open = False

    def add(self, text: str, quoted: bool) -> None:
        if not self.open:
            self.fields.append([])
            self.open = True
        self.fields[-1].append((text, quoted))

    def add_split(self, value: str, ifs: str) -> None:
        pieces, lead, trail = ifs_split(value, ifs)
        if lead:
            self.open = False
        for i, piece in enumerate(pieces):
            if i:
                self.open = False
            self.add(piece, False)
        if trail:
            self.open = False


def expand_words(sh: Shell, words: list[Word]) -> Gen:
    """argv from words: every word may become zero, one or several fields."""
    out: list[str] = []
    for word in words:
        if word.static is not None:
            out.append(word.static)
        else:
            out.extend((yield from expand_fields(sh, word)))
    return out


def expand_fields(sh: Shell, word: Word, split: bool = True) -> Gen:
    fields = _Fields()
    ifs = sh.vars.get("IFS", DEFAULT_IFS) if split else ""
    parts = word.parts
    for index, part in enumerate(parts):
        if isinstance(part, Lit):
            text = part.text
            if index == 0 and word.tilde:
                text = _tilde(sh, text)
            fields.add(text, part.quoted)
            continue
        if isinstance(part, Param) and part.op == "" and part.name in ("@", "*"):
            args = sh.args
            if part.quoted and part.name == "@":
                for i, arg in enumerate(args):
                    if i:
                        fields.open = False
                    fields.add(arg, True)
            elif part.quoted:
                fields.add(sh.vars.get("IFS", DEFAULT_IFS)[:1].join(args), True)
            elif split:
                for arg in args:
                    fields.open = False
                    fields.add_split(arg, ifs)
            else:
                fields.add(" ".join(args), False)
            continue
        value = yield from expand_part(sh, part)
        if part.quoted or not split:
            fields.add(value, True)
        else:
            fields.add_split(value, ifs)
    if not split:
        return ["".join(text for f in fields.fields for text, _ in f)]
    out: list[str] = []
    for segs in fields.fields:
        if word.has_glob and not sh.noglob and any(not q and patterns.has_magic(t) for t, q in segs):
            pattern = "".join(t if not q else patterns.escape(t) for t, q in segs)
            out.extend(glob(sh, pattern))
        else:
            out.append("".join(t for t, _ in segs))
    return out


def expand_string(sh: Shell, word: Word) -> Gen:
    """A word as one string: no field splitting, no globbing (assignments, redirections, here-docs)."""
    if word.static is not None:
        return word.static
    fields = yield from expand_fields(sh, word, split=False)
    return fields[0] if fields else ""


def expand_pattern(sh: Shell, word: Word) -> Gen:
    """A word as a pattern: quoted parts match literally (``case`` and ``${x#...}``)."""
    out: list[str] = []
    for index, part in enumerate(word.parts):
        if isinstance(part, Lit):
            text = _tilde(sh, part.text) if index == 0 and word.tilde else part.text
            out.append(patterns.escape(text) if part.quoted else text)
        else:
            value = yield from expand_part(sh, part)
            out.append(patterns.escape(value) if part.quoted else value)
    return "".join(out)


def _tilde(sh: Shell, text: str) -> str:
    if text == "~" or text.startswith("~/"):
        return sh.vars.get("HOME", "/") + text[1:]
    return text


def expand_part(sh: Shell, part: Any) -> Gen:
    if isinstance(part, Param):
        return (yield from _param(sh, part))
    if isinstance(part, CmdSub):
        return (yield from sh.command_substitution(part.body))
    if isinstance(part, Arith):
        tree = part.tree
        if tree is None:
            text = yield from expand_string(sh, part.expr)
            try:
                tree = arith.parse(text)
            except arith.ArithError as exc:
                raise ExpansionError(str(exc)) from None
        try:
            return str(sh.arith.eval(tree))
        except arith.ArithError as exc:
            raise ExpansionError(str(exc)) from None
    return ""


def _param(sh: Shell, part: Param) -> Gen:
    name, op = part.name, part.op
    value = sh.param(name)
    if op == "":
        if value is None:
            if sh.nounset and name not in ("@", "*"):
                raise ExpansionError(f"{name}: parameter not set")
            return ""
        return value
    if op == "len":
        return str(len(value or ""))
    unset = value is None
    empty = unset or value == ""
    if op in (":-", "-", ":=", "=", ":?", "?", ":+", "+"):
        missing_value = empty if op[0] == ":" else unset
        kind = op[-1]
        if kind == "+":
            if missing_value:
                return ""
            return (yield from _arg(sh, part))
        if not missing_value:
            return value or ""
        if kind == "-":
            return (yield from _arg(sh, part))
        if kind == "=":
            new = yield from _arg(sh, part)
            sh.setvar(name, new)
            return new
        message = yield from _arg(sh, part)
        raise ExpansionError(f"{name}: {message or 'parameter not set'}")
    text = value or ""
    if op in ("#", "##", "%", "%%"):
        pattern = (yield from expand_pattern(sh, part.arg)) if part.arg is not None else ""
        return patterns.remove_affix(text, pattern, op)
    if op in ("/", "//"):
        pattern = (yield from expand_pattern(sh, part.arg)) if part.arg is not None else ""
        repl = (yield from expand_string(sh, part.arg2)) if part.arg2 is not None else ""
        return patterns.replace(text, pattern, repl, op == "//")
    if op == "sub":
        offset_text = yield from _arg(sh, part)
        try:
            offset = sh.arith.eval(arith.parse(offset_text))
            if part.arg2 is not None:
                length_text = yield from expand_string(sh, part.arg2)
                length = sh.arith.eval(arith.parse(length_text))
            else:
                length = len(text)
        except arith.ArithError as exc:
            raise ExpansionError(str(exc)) from None
        if offset < 0:
            offset = max(0, len(text) + offset)
        end = offset + length if length >= 0 else len(text) + length
        return text[offset:end]
    raise ExpansionError("bad substitution")


def _arg(sh: Shell, part: Param) -> Gen:
    if part.arg is None:
        return ""
    return (yield from expand_string(sh, part.arg))


def glob(sh: Shell, pattern: str) -> list[str]:
    """Paths of the container filesystem matching ``pattern``; the pattern itself if none does."""
    absolute = pattern.startswith("/")
    comps = [c for c in pattern.split("/") if c]
    found: list[str] = ["/" if absolute else ""]
    for comp in comps:
        nxt: list[str] = []
        for base in found:
            if not patterns.has_magic(comp):
                candidate = base + ("" if base in ("", "/") else "/") + patterns.unescape(comp)
                if sh.fs.exists(candidate or ".", sh.cwd):
                    nxt.append(candidate)
                continue
            try:
                names = sh.fs.listdir(base or ".", sh.cwd)
            except VfsError:
                continue
            regex = patterns.compile_pattern(comp)
            for name in names:
                if name.startswith(".") and not comp.startswith("."):
                    continue
                if regex.fullmatch(name):
                    nxt.append(base + ("" if base in ("", "/") else "/") + name)
        found = nxt
        if not found:
            break
    if not found or not comps:
        return [patterns.unescape(pattern)]
    if pattern.endswith("/"):
        found = [f + "/" for f in found]
    return sorted(found)
