"""The shell AST: words made of parts, and the commands built from them.

The parser builds these once per script text; the interpreter walks them. Words that need no
expansion carry their final text in ``static`` (and simple commands made only of such words carry
their argv in ``static_argv``), so the common path of a loop iteration does no expansion work.
"""

from __future__ import annotations

from typing import Any


class Part:
    """A piece of a word. ``quoted`` parts are neither field-split nor globbed."""

    __slots__ = ("quoted",)

    def __init__(self, quoted: bool) -> None:
        self.quoted = quoted


class Lit(Part):
    __slots__ = ("text",)

    def __init__(self, text: str, quoted: bool) -> None:
        super().__init__(quoted)
        self.text = text


class Param(Part):
    """``$name`` or ``${name<op><arg>}``; ``op`` is "" or one of :- - := = :? ? :+ + % %% # ## / // len sub."""

    __slots__ = ("arg", "arg2", "name", "op")

    def __init__(self, name: str, op: str, arg: Word | None, quoted: bool, arg2: Word | None = None) -> None:
        super().__init__(quoted)
        self.name = name
        self.op = op
        self.arg = arg
        self.arg2 = arg2


class CmdSub(Part):
    __slots__ = ("body",)

    def __init__(self, body: Script, quoted: bool) -> None:
        super().__init__(quoted)
        self.body = body


class Arith(Part):
    """``$((expr))``: ``expr`` is expanded first unless ``tree`` (pre-parsed) is set."""

    __slots__ = ("expr", "tree")

    def __init__(self, expr: Word, tree: Any, quoted: bool) -> None:
        super().__init__(quoted)
        self.expr = expr
        self.tree = tree


class Word:
    """A shell word. ``static`` is its single field when it needs no expansion at all."""

    __slots__ = ("has_glob", "parts", "static", "tilde")

    def __init__(self, parts: list[Part]) -> None:
        self.parts = parts
        self.has_glob = any(isinstance(p, Lit) and not p.quoted and _has_glob(p.text) for p in parts)
        first = parts[0] if parts else None
        self.tilde = isinstance(first, Lit) and not first.quoted and first.text.startswith("~")
        self.static: str | None = None
        if all(isinstance(p, Lit) for p in parts) and not self.has_glob and not self.tilde:
            self.static = "".join(p.text for p in parts if isinstance(p, Lit))


def _has_glob(text: str) -> bool:
    return "*" in text or "?" in text or "[" in text


class Redir:
    """``[fd]op target``; for here-documents ``target`` is the body (expanded unless ``op`` ends in 'q')."""

    __slots__ = ("fd", "op", "target")

    def __init__(self, fd: int, op: str, target: Word) -> None:
        self.fd = fd
        self.op = op
        self.target = target


class Node:
    """A command node."""

    __slots__ = ()


class Simple(Node):
    __slots__ = ("assigns", "redirs", "static_argv", "words")

    def __init__(self, assigns: list[tuple[str, Word]], words: list[Word], redirs: list[Redir]) -> None:
        self.assigns = assigns
        self.words = words
        self.redirs = redirs
        statics = [w.static for w in words]
        self.static_argv: list[str] | None = None
        if all(s is not None for s in statics):
            self.static_argv = [s for s in statics if s is not None]


class Pipeline(Node):
    __slots__ = ("cmds", "negate")

    def __init__(self, cmds: list[Node], negate: bool) -> None:
        self.cmds = cmds
        self.negate = negate


class AndOr(Node):
    __slots__ = ("first", "rest")

    def __init__(self, first: Node, rest: list[tuple[bool, Node]]) -> None:
        self.first = first
        self.rest = rest  # (is_and, command)


class List(Node):
    __slots__ = ("items",)

    def __init__(self, items: list[tuple[Node, bool]]) -> None:
        self.items = items  # (command, runs in background)


class Group(Node):
    __slots__ = ("body",)

    def __init__(self, body: List) -> None:
        self.body = body


class Subshell(Node):
    __slots__ = ("body",)

    def __init__(self, body: List) -> None:
        self.body = body


class If(Node):
    __slots__ = ("clauses", "else_")

    def __init__(self, clauses: list[tuple[List, List]], else_: List | None) -> None:
        self.clauses = clauses
        self.else_ = else_


class Loop(Node):
    __slots__ = ("body", "cond", "until")

    def __init__(self, cond: List, body: List, until: bool) -> None:
        self.cond = cond
        self.body = body
        self.until = until


class For(Node):
    __slots__ = ("body", "var", "words")

    def __init__(self, var: str, words: list[Word] | None, body: List) -> None:
        self.var = var
        self.words = words  # None: over "$@"
        self.body = body


class Case(Node):
    __slots__ = ("arms", "word")

    def __init__(self, word: Word, arms: list[tuple[list[Word], List]]) -> None:
        self.word = word
        self.arms = arms


class FuncDef(Node):
    __slots__ = ("body", "name")

    def __init__(self, name: str, body: Node) -> None:
        self.name = name
        self.body = body


class Redirected(Node):
    """A compound command with redirections."""

    __slots__ = ("cmd", "redirs")

    def __init__(self, cmd: Node, redirs: list[Redir]) -> None:
        self.cmd = cmd
        self.redirs = redirs


class Script:
    """A parsed script: the commands before the first syntax error, and that error (if any)."""

    __slots__ = ("body", "error")

    def __init__(self, body: List, error: str | None) -> None:
        self.body = body
        self.error = error
