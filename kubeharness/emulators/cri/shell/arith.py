"""Shell arithmetic (``$(( ))``): a small precedence-climbing parser and a 64-bit integer evaluator.

Supports C's integer operators as the shell does (and ``**``): ``, = += -= *= /= %= <<= >>= &= ^= |= ?: || && | ^ &
== != < <= > >= << >> + - * / % ! ~``, unary ``+ -``, ``++``/``--`` on variables, parentheses, decimal,
octal (``010``) and hex (``0x1f``) constants, and variables with or without ``$`` (unset or empty is 0).
Trees are tuples so that pre-parsed expressions are cheap to keep in the AST.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Tree = tuple[Any, ...]

_TOKEN = re.compile(
    r"\s*(?:(?P<num>0[xX][0-9a-fA-F]+|\d+)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op><<=|>>=|\+\+|--|\+=|-=|\*=|/=|%=|&=|\^=|\|=|\*\*|<<|>>|<=|>=|==|!=|&&|\|\||[-+*/%<>=!~&^|?:(),]))"
)
_BINARY = {
    "||": 1,
    "&&": 2,
    "|": 3,
    "^": 4,
    "&": 5,
    "==": 6,
    "!=": 6,
    "<": 7,
    "<=": 7,
    ">": 7,
    ">=": 7,
    "<<": 8,
    ">>": 8,
    "+": 9,
    "-": 9,
    "*": 10,
    "/": 10,
    "%": 10,
    "**": 11,
}
_ASSIGN = frozenset({"=", "+=", "-=", "*=", "/=", "%=", "<<=", ">>=", "&=", "^=", "|="})


class ArithError(Exception):
    """A malformed expression or a division by zero; ``str()`` is what the shell prints after ``sh: ``."""


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise ArithError("arithmetic syntax error")
        pos = match.end()
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
    return tokens


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.t = tokens
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise ArithError("arithmetic syntax error")
        self.i += 1
        return tok

    def comma(self) -> Tree:
        left = self.assign()
        while self.peek() == ("op", ","):
            self.i += 1
            left = ("comma", left, self.assign())
        return left

    def assign(self) -> Tree:
        tok = self.peek()
        nxt = self.t[self.i + 1] if self.i + 1 < len(self.t) else None
        if tok is not None and tok[0] == "name" and nxt is not None and nxt[0] == "op" and nxt[1] in _ASSIGN:
            self.i += 2
            return ("assign", nxt[1], tok[1], self.assign())
        return self.ternary()

    def ternary(self) -> Tree:
        cond = self.binary(1)
        if self.peek() == ("op", "?"):
            self.i += 1
            yes = self.assign()
            if self.take() != ("op", ":"):
                raise ArithError("arithmetic syntax error")
            return ("tern", cond, yes, self.assign())
        return cond

    def binary(self, level: int) -> Tree:
        left = self.unary()
        while True:
            tok = self.peek()
            if tok is None or tok[0] != "op":
                return left
            prec = _BINARY.get(tok[1])
            if prec is None or prec < level:
                return left
            self.i += 1
            # ** binds right to left; everything else left to right
            left = ("bin", tok[1], left, self.binary(prec if tok[1] == "**" else prec + 1))

    def unary(self) -> Tree:
        kind, value = self.take()
        if kind == "num":
            return ("num", int(value, 16) if value[:2].lower() == "0x" else int(value, 8 if value[0] == "0" else 10))
        if kind == "name":
            tok = self.peek()
            if tok in (("op", "++"), ("op", "--")):
                self.i += 1
                return ("post", tok[1], value)
            return ("var", value)
        if value in ("++", "--"):
            name = self.take()
            if name[0] != "name":
                raise ArithError("arithmetic syntax error")
            return ("pre", value, name[1])
        if value in ("-", "+", "!", "~"):
            return ("un", value, self.unary())
        if value == "(":
            inner = self.comma()
            if self.take() != ("op", ")"):
                raise ArithError("arithmetic syntax error")
            return inner
        raise ArithError("arithmetic syntax error")


def parse(text: str) -> Tree:
    tokens = _tokenize(text)
    if not tokens:
        return ("num", 0)
    parser = _Parser(tokens)
    tree = parser.comma()
    if parser.peek() is not None:
        raise ArithError("arithmetic syntax error")
    return tree


def _wrap(value: int) -> int:
    value &= 0xFFFFFFFFFFFFFFFF
    return value - (1 << 64) if value >= 1 << 63 else value


def _div(a: int, b: int, op: str) -> int:
    if b == 0:
        raise ArithError("divide by zero")
    q = abs(a) // abs(b)
    q = q if (a >= 0) == (b >= 0) else -q
    return q if op == "/" else a - b * q


def _apply(op: str, a: int, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op in ("/", "%"):
        return _div(a, b, op)
    if op == "**":
        if b < 0:
            raise ArithError("exponent less than 0")
        return pow(a, b, 1 << 64)
    if op == "<<":
        return a << (b & 63)
    if op == ">>":
        return a >> (b & 63)
    if op == "&":
        return a & b
    if op == "|":
        return a | b
    if op == "^":
        return a ^ b
    if op == "==":
        return int(a == b)
    if op == "!=":
        return int(a != b)
    if op == "<":
        return int(a < b)
    if op == "<=":
        return int(a <= b)
    if op == ">":
        return int(a > b)
    if op == ">=":
        return int(a >= b)
    raise ArithError("arithmetic syntax error")


class Evaluator:
    """Evaluates trees against the shell's variables."""

    def __init__(self, get: Callable[[str], str | None], put: Callable[[str, str], None]) -> None:
        self.get = get
        self.put = put
        self.depth = 0

    def value_of(self, name: str) -> int:
        text = (self.get(name) or "").strip()
        if not text:
            return 0
        try:
            return int(text, 16) if text[:2].lower() == "0x" else int(text, 8 if text[0] == "0" else 10)
        except ValueError:
            pass
        if self.depth > 16:
            raise ArithError("expression recursion loop detected")
        self.depth += 1
        try:
            return self.eval(parse(text))
        finally:
            self.depth -= 1

    def eval(self, tree: Tree) -> int:
        kind = tree[0]
        if kind == "num":
            return int(tree[1])
        if kind == "var":
            return self.value_of(tree[1])
        if kind == "bin":
            op = tree[1]
            if op == "&&":
                return int(bool(self.eval(tree[2])) and bool(self.eval(tree[3])))
            if op == "||":
                return int(bool(self.eval(tree[2])) or bool(self.eval(tree[3])))
            return _wrap(_apply(op, self.eval(tree[2]), self.eval(tree[3])))
        if kind == "un":
            value = self.eval(tree[2])
            return {"-": -value, "+": value, "!": int(not value), "~": ~value}[tree[1]]
        if kind == "assign":
            op, name = tree[1], tree[2]
            value = self.eval(tree[3])
            if op != "=":
                value = _wrap(_apply(op[:-1], self.value_of(name), value))
            self.put(name, str(value))
            return value
        if kind in ("pre", "post"):
            old = self.value_of(tree[2])
            new = old + 1 if tree[1] == "++" else old - 1
            self.put(tree[2], str(new))
            return new if kind == "pre" else old
        if kind == "tern":
            return self.eval(tree[2]) if self.eval(tree[1]) else self.eval(tree[3])
        if kind == "comma":
            self.eval(tree[1])
            return self.eval(tree[2])
        raise ArithError("arithmetic syntax error")
