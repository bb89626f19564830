"""The POSIX shell subset, parsed once into an AST (:mod:`.nodes`); :func:`parse` caches by script text.

A hand-written recursive-descent parser over the characters of the script: the lexer knows the
operators, quoting (single, double, backslash), ``$`` expansions (``$name``, ``${...}`` with its
operators, ``$(...)``, backquotes, ``$((...))``), io numbers (``2>``) and here-documents; reserved
words are recognised by the parser where a command may start. As in busybox ash, the script runs line
by line, so :class:`~.nodes.Script` keeps the complete lines before a syntax error and the error text
(``syntax error: unexpected "fi"``), which the interpreter reports after running those lines.
"""

from __future__ import annotations

from typing import Any

from kubeharness.emulators.cri.shell import arith
from kubeharness.emulators.cri.shell.nodes import (
    AndOr,
    Arith,
    Case,
    CmdSub,
    For,
    FuncDef,
    Group,
    If,
    List,
    Lit,
    Loop,
    Node,
    Param,
    Part,
    Pipeline,
    Redir,
    Redirected,
    Script,
    Simple,
    Subshell,
    Word,
)

RESERVED = frozenset(
    {"if", "then", "else", "elif", "fi", "do", "done", "case", "esac", "while", "until", "for", "{", "}", "!"}
)
# Reserved words that end a list rather than start a command.
_ENDERS = frozenset({"then", "else", "elif", "fi", "do", "done", "esac", "}"})
_OPS = ("&&", "||", ";;", "<<-", "<<", ">>", "<&", ">&", "<>", ">|", "&", "|", ";", "<", ">", "(", ")")
_REDIR_OPS = frozenset({"<<-", "<<", ">>", "<&", ">&", "<>", ">|", "<", ">"})
_META = frozenset(" \t\n;&|<>()")
_SPECIAL_PARAMS = "@*#?$!-"
_NAME_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_NAME_CHARS = _NAME_START | frozenset("0123456789")
_BRACE_OPS = (":-", ":=", ":?", ":+", "-", "=", "?", "+", "%%", "%", "##", "#", "//", "/", ":")

Token = tuple[str, Any]  # (kind, value): op, word, io, eof


class ShSyntaxError(Exception):
    """A syntax error; ``str()`` is the message after ``sh: ``."""


def is_name(text: str) -> bool:
    return bool(text) and text[0] in _NAME_START and all(c in _NAME_CHARS for c in text)


def plain(word: Word) -> str | None:
    """The text of a word written without any quoting or expansion, else None."""
    if len(word.parts) == 1:
        part = word.parts[0]
        if isinstance(part, Lit) and not part.quoted:
            return part.text
    return None


def _describe(tok: Token) -> str:
    kind, value = tok
    if kind == "eof":
        return "end of file"
    if kind == "op":
        return "newline" if value == "\n" else f'"{value}"'
    if kind == "io":
        return f'"{value}"'
    word: Word = value
    text = word.static if word.static is not None else "".join(p.text for p in word.parts if isinstance(p, Lit))
    return f'"{text}"'


class Parser:
    """One parse of one script text."""

    def __init__(self, src: str) -> None:
        self.s = src
        self.i = 0
        self.n = len(src)
        self.tok: Token | None = None
        self.heredocs: list[tuple[Redir, str, bool, bool]] = []

    # -- lexer --------------------------------------------------------------------------------------

    def error(self, message: str) -> ShSyntaxError:
        return ShSyntaxError(f"syntax error: {message}")

    def unexpected(self, tok: Token, expecting: str = "") -> ShSyntaxError:
        if tok[0] == "eof" and expecting:
            return self.error(f'unexpected end of file (expecting "{expecting}")')
        return self.error(f"unexpected {_describe(tok)}")

    def _skip_blanks(self) -> None:
        s, n = self.s, self.n
        while self.i < n:
            c = s[self.i]
            if c == " " or c == "\t":
                self.i += 1
            elif c == "\\" and s.startswith("\\\n", self.i):
                self.i += 2
            elif c == "#":
                end = s.find("\n", self.i)
                self.i = n if end < 0 else end
            else:
                break

    def next(self) -> Token:
        if self.tok is not None:
            tok, self.tok = self.tok, None
            return tok
        self._skip_blanks()
        if self.i >= self.n:
            return ("eof", None)
        s, i = self.s, self.i
        c = s[i]
        if c == "\n":
            self.i += 1
            if self.heredocs:
                self._read_heredocs()
            return ("op", "\n")
        if c in _META:
            for op in _OPS:
                if s.startswith(op, i):
                    self.i += len(op)
                    return ("op", op)
        start = i
        word = self._read_word()
        if self.i < self.n and s[self.i] in "<>" and s[start : self.i].isdigit():
            return ("io", int(s[start : self.i]))
        return ("word", word)

    def peek(self) -> Token:
        if self.tok is None:
            self.tok = self.next()
        return self.tok

    def _read_word(self) -> Word:
        s, n = self.s, self.n
        parts: list[Part] = []
        buf: list[str] = []
        while self.i < n:
            c = s[self.i]
            if c in _META:
                break
            if c == "\\":
                if self.i + 1 < n:
                    if s[self.i + 1] == "\n":
                        self.i += 2
                        continue
                    _flush(parts, buf, False)
                    parts.append(Lit(s[self.i + 1], True))
                    self.i += 2
                else:
                    buf.append(c)
                    self.i += 1
            elif c in "'\"$`":
                _flush(parts, buf, False)
                self._read_quoted_or_expansion(parts, buf, False)
            else:
                buf.append(c)
                self.i += 1
        _flush(parts, buf, False)
        return Word(parts)

    def _read_quoted_or_expansion(self, parts: list[Part], buf: list[str], quoted: bool) -> None:
        s = self.s
        c = s[self.i]
        if c == "'":
            end = s.find("'", self.i + 1)
            if end < 0:
                raise self.error("unterminated quoted string")
            parts.append(Lit(s[self.i + 1 : end], True))
            self.i = end + 1
        elif c == '"':
            self.i += 1
            self._read_dquote(parts)
        elif c == "$":
            part = self._read_dollar(quoted)
            if part is None:
                buf.append("$")
            else:
                parts.append(part)
        else:
            parts.append(self._read_backtick(quoted))

    def _read_dquote(self, parts: list[Part]) -> None:
        s, n = self.s, self.n
        buf: list[str] = []
        before = len(parts)
        while True:
            if self.i >= n:
                raise self.error("unterminated quoted string")
            c = s[self.i]
            if c == '"':
                self.i += 1
                break
            if c == "\\" and self.i + 1 < n and s[self.i + 1] in '$`"\\\n':
                if s[self.i + 1] != "\n":
                    buf.append(s[self.i + 1])
                self.i += 2
            elif c == "$" or c == "`":
                _flush(parts, buf, True)
                self._read_quoted_or_expansion(parts, buf, True)
            else:
                buf.append(c)
                self.i += 1
        _flush(parts, buf, True)
        if len(parts) == before:
            parts.append(Lit("", True))

    def _read_dollar(self, quoted: bool) -> Part | None:
        s, n = self.s, self.n
        nxt = s[self.i + 1] if self.i + 1 < n else ""
        if nxt == "(":
            if s.startswith("((", self.i + 1):
                end = self._arith_end(self.i + 3)
                if end is not None:
                    text = s[self.i + 3 : end]
                    self.i = end + 2
                    return _arith_part(text, quoted)
            self.i += 2
            return CmdSub(self._parse_nested(), quoted)
        if nxt == "{":
            self.i += 2
            return self._read_brace_param(quoted)
        if nxt == "'" and not quoted:
            return self._read_ansi_c()
        if nxt in _NAME_START and nxt:
            j = self.i + 1
            while j < n and s[j] in _NAME_CHARS:
                j += 1
            name = s[self.i + 1 : j]
            self.i = j
            return Param(name, "", None, quoted)
        if nxt and (nxt.isdigit() or nxt in _SPECIAL_PARAMS):
            self.i += 2
            return Param(nxt, "", None, quoted)
        self.i += 1
        return None

    def _read_ansi_c(self) -> Part:
        """``$'...'``: single quotes with backslash escapes (\\n, \\t, \\x41, \\0101, \\', ...)."""
        s, n = self.s, self.n
        j = self.i + 2
        out: list[str] = []
        while True:
            if j >= n:
                raise self.error("unterminated quoted string")
            c = s[j]
            if c == "'":
                break
            if c == "\\" and j + 1 < n:
                out.append(s[j : j + 2])
                j += 2
                continue
            out.append(c)
            j += 1
        self.i = j + 1
        text = "".join(out).replace("\\'", "'")
        return Lit(ansi_c_escapes(text), True)

    def _arith_end(self, start: int) -> int | None:
        """Index of the ``))`` closing ``$((`` whose body starts at ``start``, or None if it is ``$( (``."""
        depth = 0
        s = self.s
        for j in range(start, self.n):
            c = s[j]
            if c == "(":
                depth += 1
            elif c == ")":
                if depth == 0:
                    return j if s.startswith("))", j) else None
                depth -= 1
        return None

    def _parse_nested(self) -> Script:
        saved = self.tok
        self.tok = None
        body = self.parse_list()
        tok = self.next()
        if tok != ("op", ")"):
            raise self.unexpected(tok, ")")
        self.tok = saved
        return Script(body, None)

    def _read_backtick(self, quoted: bool) -> CmdSub:
        s, n = self.s, self.n
        j = self.i + 1
        inner: list[str] = []
        while True:
            if j >= n:
                raise self.error("unterminated quoted string")
            c = s[j]
            if c == "`":
                break
            if c == "\\" and j + 1 < n and s[j + 1] in "\\`$":
                inner.append(s[j + 1])
                j += 2
                continue
            inner.append(c)
            j += 1
        self.i = j + 1
        sub = Parser("".join(inner))
        script = sub.parse_script()
        if script.error:
            raise ShSyntaxError(script.error)
        return CmdSub(script, quoted)

    def _read_name(self) -> str:
        s, n = self.s, self.n
        j = self.i
        if j < n and s[j] in _NAME_START:
            while j < n and s[j] in _NAME_CHARS:
                j += 1
        elif j < n and s[j].isdigit():
            while j < n and s[j].isdigit():
                j += 1
        elif j < n and s[j] in _SPECIAL_PARAMS:
            j += 1
        name = s[self.i : j]
        self.i = j
        return name

    def _read_brace_param(self, quoted: bool) -> Param:
        s = self.s
        if s.startswith("#", self.i) and not s.startswith("#}", self.i):
            self.i += 1
            name = self._read_name()
            if not name or not s.startswith("}", self.i):
                raise self.error("bad substitution")
            self.i += 1
            return Param(name, "len", None, quoted)
        name = self._read_name()
        if not name:
            raise self.error("bad substitution")
        if s.startswith("}", self.i):
            self.i += 1
            return Param(name, "", None, quoted)
        for op in _BRACE_OPS:
            if s.startswith(op, self.i):
                break
        else:
            raise self.error("bad substitution")
        self.i += len(op)
        arg2: Word | None = None
        if op in ("/", "//"):
            arg = self._read_brace_word("/}", quoted)
            if s.startswith("/", self.i):
                self.i += 1
                arg2 = self._read_brace_word("}", quoted)
        elif op == ":":
            op = "sub"
            arg = self._read_brace_word(":}", quoted)
            if s.startswith(":", self.i):
                self.i += 1
                arg2 = self._read_brace_word("}", quoted)
        else:
            arg = self._read_brace_word("}", quoted)
        if not s.startswith("}", self.i):
            raise self.error("bad substitution")
        self.i += 1
        return Param(name, op, arg, quoted, arg2)

    def _read_brace_word(self, stops: str, quoted: bool) -> Word:
        s, n = self.s, self.n
        parts: list[Part] = []
        buf: list[str] = []
        while True:
            if self.i >= n:
                raise self.error("bad substitution")
            c = s[self.i]
            if c in stops:
                break
            if c == "\\" and self.i + 1 < n:
                _flush(parts, buf, quoted)
                parts.append(Lit(s[self.i + 1], True))
                self.i += 2
            elif c in "$`" or (c in "'\"" and not quoted):
                _flush(parts, buf, quoted)
                self._read_quoted_or_expansion(parts, buf, quoted)
            else:
                buf.append(c)
                self.i += 1
        _flush(parts, buf, quoted)
        return Word(parts)

    def _read_heredocs(self) -> None:
        pending, self.heredocs = self.heredocs, []
        s = self.s
        for redir, delim, strip, literal in pending:
            lines: list[str] = []
            while self.i < self.n:
                end = s.find("\n", self.i)
                line = s[self.i : end if end >= 0 else self.n]
                self.i = end + 1 if end >= 0 else self.n
                if strip:
                    line = line.lstrip("\t")
                if line == delim:
                    break
                lines.append(line + "\n")
            body = "".join(lines)
            redir.target = Word([Lit(body, True)]) if literal else _heredoc_word(body)

    # -- grammar ------------------------------------------------------------------------------------

    def reserved(self, tok: Token) -> str | None:
        if tok[0] == "word":
            text = plain(tok[1])
            if text in RESERVED:
                return text
        return None

    def expect(self, word: str) -> None:
        tok = self.next()
        if self.reserved(tok) != word:
            raise self.unexpected(tok, word)

    def skip_newlines(self) -> None:
        while self.peek() == ("op", "\n"):
            self.next()

    def parse_script(self) -> Script:
        items: list[tuple[Node, bool]] = []
        try:
            while True:
                self.skip_newlines()
                if self.peek()[0] == "eof":
                    break
                items.extend(self._parse_line())
        except ShSyntaxError as exc:
            return Script(List(items), str(exc))
        if self.heredocs:
            self._read_heredocs()
        return Script(List(items), None)

    def _parse_line(self) -> list[tuple[Node, bool]]:
        items: list[tuple[Node, bool]] = []
        while True:
            node = self.and_or()
            tok = self.peek()
            if tok[0] == "op" and tok[1] in (";", "&"):
                self.next()
                items.append((node, tok[1] == "&"))
                nxt = self.peek()
                if nxt[0] == "eof" or nxt == ("op", "\n"):
                    self.next()
                    return items
                continue
            if tok[0] == "eof" or tok == ("op", "\n"):
                self.next()
                items.append((node, False))
                return items
            raise self.unexpected(tok)

    def parse_list(self, closing: str = "") -> List:
        """Commands up to a word that ends a list; ``closing`` names the one expected (for messages)."""
        items: list[tuple[Node, bool]] = []
        self.skip_newlines()
        while True:
            tok = self.peek()
            if tok[0] == "eof" or tok == ("op", ")") or tok == ("op", ";;") or self.reserved(tok) in _ENDERS:
                break
            node = self.and_or()
            tok = self.peek()
            if tok[0] == "op" and tok[1] in (";", "&", "\n"):
                self.next()
                items.append((node, tok[1] == "&"))
                self.skip_newlines()
                continue
            items.append((node, False))
            break
        if not items:
            raise self.unexpected(self.peek(), closing)
        if closing and self.peek()[0] == "eof":
            raise self.unexpected(self.peek(), closing)
        return List(items)

    def and_or(self) -> Node:
        first = self.pipeline()
        rest: list[tuple[bool, Node]] = []
        while True:
            tok = self.peek()
            if tok == ("op", "&&") or tok == ("op", "||"):
                self.next()
                self.skip_newlines()
                rest.append((tok[1] == "&&", self.pipeline()))
            else:
                break
        return AndOr(first, rest) if rest else first

    def pipeline(self) -> Node:
        negate = False
        if self.reserved(self.peek()) == "!":
            self.next()
            negate = True
        cmds = [self.command()]
        while self.peek() == ("op", "|"):
            self.next()
            self.skip_newlines()
            cmds.append(self.command())
        if len(cmds) == 1 and not negate:
            return cmds[0]
        return Pipeline(cmds, negate)

    def command(self) -> Node:
        tok = self.peek()
        word = self.reserved(tok)
        node: Node
        if word is not None:
            self.next()
            if word == "{":
                node = Group(self.parse_list("}"))
                self.expect("}")
            elif word == "if":
                node = self._parse_if()
            elif word in ("while", "until"):
                cond = self.parse_list("do")
                self.expect("do")
                body = self.parse_list("done")
                self.expect("done")
                node = Loop(cond, body, word == "until")
            elif word == "for":
                node = self._parse_for()
            elif word == "case":
                node = self._parse_case()
            else:
                raise self.unexpected(tok)
        elif tok == ("op", "("):
            self.next()
            node = Subshell(self.parse_list())
            end = self.next()
            if end != ("op", ")"):
                raise self.unexpected(end, ")")
        else:
            return self._parse_simple()
        redirs = self._parse_redirs()
        return Redirected(node, redirs) if redirs else node

    def _parse_redirs(self) -> list[Redir]:
        redirs: list[Redir] = []
        while True:
            tok = self.peek()
            if tok[0] == "io" or (tok[0] == "op" and tok[1] in _REDIR_OPS):
                redirs.append(self._parse_redir())
            else:
                return redirs

    def _parse_redir(self) -> Redir:
        tok = self.next()
        fd = -1
        if tok[0] == "io":
            fd = tok[1]
            tok = self.next()
        op = tok[1]
        if tok[0] != "op" or op not in _REDIR_OPS:
            raise self.unexpected(tok)
        if fd < 0:
            fd = 0 if op[0] == "<" else 1
        target = self.next()
        if target[0] != "word":
            raise self.unexpected(target)
        word: Word = target[1]
        redir = Redir(fd, op, word)
        if op in ("<<", "<<-"):
            delim = "".join(p.text for p in word.parts if isinstance(p, Lit))
            literal = any(p.quoted for p in word.parts)
            redir.op = "<<"
            self.heredocs.append((redir, delim, op == "<<-", literal))
        return redir

    def _parse_simple(self) -> Node:
        assigns: list[tuple[str, Word]] = []
        words: list[Word] = []
        redirs: list[Redir] = []
        while True:
            tok = self.peek()
            if tok[0] == "io" or (tok[0] == "op" and tok[1] in _REDIR_OPS):
                redirs.append(self._parse_redir())
            elif tok[0] == "word":
                word: Word = tok[1]
                if not words:
                    split = _assignment(word)
                    if split is not None:
                        self.next()
                        assigns.append(split)
                        continue
                self.next()
                if not words and not assigns and not redirs and self.peek() == ("op", "("):
                    return self._parse_function(word)
                words.append(word)
            else:
                break
        if not (assigns or words or redirs):
            raise self.unexpected(self.peek())
        return Simple(assigns, words, redirs)

    def _parse_function(self, word: Word) -> Node:
        name = plain(word)
        self.next()
        close = self.next()
        if name is None or not is_name(name) or close != ("op", ")"):
            raise self.unexpected(close if close != ("op", ")") else ("op", "("))
        self.skip_newlines()
        return FuncDef(name, self.command())

    def _parse_if(self) -> Node:
        clauses: list[tuple[List, List]] = []
        cond = self.parse_list("then")
        self.expect("then")
        clauses.append((cond, self.parse_list("fi")))
        while True:
            tok = self.next()
            word = self.reserved(tok)
            if word == "elif":
                cond = self.parse_list("then")
                self.expect("then")
                clauses.append((cond, self.parse_list("fi")))
            elif word == "else":
                else_ = self.parse_list("fi")
                self.expect("fi")
                return If(clauses, else_)
            elif word == "fi":
                return If(clauses, None)
            else:
                raise self.unexpected(tok, "fi")

    def _parse_for(self) -> Node:
        tok = self.next()
        var = plain(tok[1]) if tok[0] == "word" else None
        if var is None or not is_name(var):
            raise self.error("bad for loop variable")
        words: list[Word] | None = None
        self.skip_newlines()
        tok = self.peek()
        if self.reserved(tok) is None and tok[0] == "word" and plain(tok[1]) == "in":
            self.next()
            words = []
            while self.peek()[0] == "word":
                words.append(self.next()[1])
            tok = self.next()
            if tok[0] != "op" or tok[1] not in (";", "\n"):
                raise self.unexpected(tok, "do")
        elif tok == ("op", ";"):
            self.next()
        self.skip_newlines()
        self.expect("do")
        body = self.parse_list("done")
        self.expect("done")
        return For(var, words, body)

    def _parse_case(self) -> Node:
        tok = self.next()
        if tok[0] != "word":
            raise self.unexpected(tok)
        subject: Word = tok[1]
        self.skip_newlines()
        tok = self.next()
        if tok[0] != "word" or plain(tok[1]) != "in":
            raise self.unexpected(tok, "in")
        arms: list[tuple[list[Word], List]] = []
        while True:
            self.skip_newlines()
            tok = self.peek()
            if self.reserved(tok) == "esac":
                self.next()
                return Case(subject, arms)
            if tok == ("op", "("):
                self.next()
            patterns: list[Word] = []
            while True:
                tok = self.next()
                if tok[0] != "word":
                    raise self.unexpected(tok, "esac")
                patterns.append(tok[1])
                sep = self.next()
                if sep == ("op", ")"):
                    break
                if sep != ("op", "|"):
                    raise self.unexpected(sep, ")")
            self.skip_newlines()
            tok = self.peek()
            body = List([]) if tok == ("op", ";;") or self.reserved(tok) == "esac" else self.parse_list("esac")
            arms.append((patterns, body))
            tok = self.peek()
            if tok == ("op", ";;"):
                self.next()
            elif self.reserved(tok) != "esac":
                raise self.unexpected(tok, "esac")


_ANSI = {"a": "\a", "b": "\b", "e": "\x1b", "E": "\x1b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def ansi_c_escapes(text: str) -> str:
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c != "\\" or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt in _ANSI:
            out.append(_ANSI[nxt])
            i += 2
        elif nxt in "01234567":
            end = i + 1
            while end < n and end < i + 4 and text[end] in "01234567":
                end += 1
            out.append(chr(int(text[i + 1 : end], 8) & 0xFF))
            i = end
        elif nxt == "x":
            end = i + 2
            while end < n and end < i + 4 and text[end] in "0123456789abcdefABCDEF":
                end += 1
            out.append(chr(int(text[i + 2 : end], 16)) if end > i + 2 else "\\x")
            i = end
        else:
            out.append(nxt if nxt in "\\'\"?" else "\\" + nxt)
            i += 2
    return "".join(out)


def _flush(parts: list[Part], buf: list[str], quoted: bool) -> None:
    if buf:
        parts.append(Lit("".join(buf), quoted))
        buf.clear()


def _assignment(word: Word) -> tuple[str, Word] | None:
    first = word.parts[0] if word.parts else None
    if not isinstance(first, Lit) or first.quoted:
        return None
    eq = first.text.find("=")
    if eq <= 0 or not is_name(first.text[:eq]):
        return None
    rest = first.text[eq + 1 :]
    parts: list[Part] = ([Lit(rest, False)] if rest else []) + list(word.parts[1:])
    return first.text[:eq], Word(parts)


def _arith_part(text: str, quoted: bool) -> Arith:
    if "$" not in text and "`" not in text:
        try:
            tree = arith.parse(text)
        except arith.ArithError:
            tree = None
        return Arith(Word([Lit(text, True)]), tree, quoted)
    return Arith(_heredoc_word(text), None, quoted)


def _heredoc_word(text: str) -> Word:
    """A here-document body (or arithmetic text): expansions and backslash escapes, nothing split."""
    p = Parser(text)
    parts: list[Part] = []
    buf: list[str] = []
    s, n = p.s, p.n
    while p.i < n:
        c = s[p.i]
        if c == "\\" and p.i + 1 < n and s[p.i + 1] in "$`\\\n":
            if s[p.i + 1] != "\n":
                buf.append(s[p.i + 1])
            p.i += 2
        elif c == "$" or c == "`":
            _flush(parts, buf, True)
            p._read_quoted_or_expansion(parts, buf, True)
        else:
            buf.append(c)
            p.i += 1
    _flush(parts, buf, True)
    return Word(parts or [Lit("", True)])


_cache: dict[str, Script] = {}
_CACHE_MAX = 2048


def parse(text: str) -> Script:
    """The AST of ``text``, parsed once per distinct text."""
    script = _cache.get(text)
    if script is None:
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        script = Parser(text).parse_script()
        _cache[text] = script
    return script
