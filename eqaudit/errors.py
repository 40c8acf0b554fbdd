"""The one error type that every user mistake becomes: exit code 2, one line, no traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path


_LINE_BREAKS = {"\n": "\\n", "\r": "\\r", "\x0b": "\\v", "\x0c": "\\f", "\x1c": "\\x1c", "\x1d": "\\x1d",
                "\x1e": "\\x1e", "\x85": "\\x85", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_ESCAPE_BREAKS = str.maketrans(_LINE_BREAKS)


def one_line(text: str) -> str:
    """``text`` with every line break shown as an escape (``\\n``): messages stay one line even
    when they quote a key or value that contains one."""
    return str(text).translate(_ESCAPE_BREAKS)


def squeezed(text: object, limit: int = 300) -> str:
    """``text`` on one line (every run of whitespace one space), cut to ``limit`` characters with
    ``...``: how a library's long or multi-line message is quoted inside an error."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` of an exception raised by user or library code (a
    multi-line message, such as a C++ stack, is cut to its first line)."""
    text = str(exc).strip()
    head = text.splitlines()[0] if text else ""
    more = " …" if len(text.splitlines()) > 1 else ""
    return f"{type(exc).__name__}: {head}{more}" if head else type(exc).__name__


class EqauditError(Exception):
    """A problem with the user's input (spec, checkpoint, option, model output).

    Rendered as one line: ``FILE:LINE: KEY: message (hint)``. The CLI turns it into exit code 2.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        key: str | None = None,
        line: int | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = str(file) if file is not None else None
        self.key = key
        self.line = line
        self.hint = hint

    def located(
        self, *, file: str | Path | None = None, key: str | None = None, line: int | None = None
    ) -> EqauditError:
        """Fill in a location that the raiser did not know (keeps what it knew)."""
        if self.file is None and file is not None:
            self.file = str(file)
        if self.key is None and key is not None:
            self.key = key
        if self.line is None and line is not None:
            self.line = line
        return self

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line else "") + ": "
        elif self.line:
            where = f"line {self.line}: "
        key = f"{self.key}: " if self.key else ""
        hint = f" ({self.hint})" if self.hint else ""
        return one_line(f"{where}{key}{self.message}{hint}")


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A hint naming the closest valid choice, or listing the choices when none is close."""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    if len(choices) <= 12:
        return "expected one of: " + ", ".join(choices)
    return None


class ArgumentError(EqauditError):
    """A bad argument of a library call (``audit(samples=0)``): ``argument`` is the Python
    parameter's name, which the library reports; the CLI names its own option instead."""

    def __init__(self, argument: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, key=argument, hint=hint)
        self.argument = argument
