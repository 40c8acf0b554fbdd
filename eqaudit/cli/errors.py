"""Known errors become one line on stderr and exit code 2, in one place: the library's
:class:`EqauditError` (an :class:`ArgumentError` named by the command's option), Click's usage
errors, ``sys.exit`` in the user's code, and anything unexpected (named with the spec file)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import typer

from .output import escape, fail
from ..errors import ArgumentError, EqauditError, first_line, one_line

F = TypeVar("F", bound=Callable[..., Any])

#: The library's parameter names and the options that set them, for every command.
FLAGS = {
    "samples": "--samples", "seed": "--seed", "device": "--device", "batch_size": "--batch-size",
    "confidence": "--confidence", "gate": "--gate", "precision": "--precision", "max_samples": "--max-samples",
    "compile": "--compile", "checkpoint": "--checkpoint", "trust_checkpoint": "--trust-checkpoint",
    "quantiles": "--quantiles", "layers": "--layers", "check": "--check", "param": "--param",
    "values": "--values", "check_name": "--check", "steps": "--steps", "resume": "--resume", "force": "--force", "dynamics": "--dynamics",
}


def flag_for(argument: str, overrides: Mapping[str, str] | None = None) -> str:
    """The option of the library parameter ``argument`` (``batch_size`` -> ``--batch-size``)."""
    if overrides and argument in overrides:
        return overrides[argument]
    return FLAGS.get(argument, "--" + argument.replace("_", "-"))


def as_option(exc: ArgumentError, flags: Mapping[str, str] | None = None) -> EqauditError:
    """The library's error about parameter ``samples`` as the CLI's about ``--samples`` (a message
    that starts with the parameter's name drops it: ``--samples: must be >= 1``)."""
    message = exc.message.removeprefix(f"{exc.argument} ")
    return EqauditError(message, file=exc.file, key=flag_for(exc.argument, flags), line=exc.line, hint=exc.hint)


def usage_error_line(exc: Any) -> str:
    """Click's usage error (``--samples abc``, an unknown option) as one line."""
    message = one_line(" ".join(str(exc.format_message()).split()))
    ctx = getattr(exc, "ctx", None)
    path = getattr(ctx, "command_path", None) or "eqaudit"
    return f"{message} (see '{path} --help')"


def _spec_file(kwargs: Mapping[str, Any]) -> str | None:
    for name in ("spec", "config"):
        if isinstance(kwargs.get(name), (str, Path)):
            return str(kwargs[name])
    return None


def handles_errors(flags: Mapping[str, str] | None = None) -> Callable[[F], F]:
    """Decorate a command: known errors become one line and exit code 2 (tracebacks with
    ``--debug``); ``flags`` maps library parameters to this command's options where they differ."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = inspect.signature(fn).bind_partial(*args, **kwargs).arguments
            debug = bool(bound.get("debug", False))
            try:
                return fn(*args, **kwargs)
            except typer.Exit:
                raise
            except ArgumentError as exc:
                if debug:
                    raise
                fail(escape(str(as_option(exc, flags))))
            except EqauditError as exc:
                if debug:
                    raise
                fail(escape(str(exc)))
            except KeyboardInterrupt:
                fail("interrupted")
                raise typer.Exit(130) from None
            except SystemExit as exc:  # sys.exit() in the user's code: its 0/1 would pass or fail the gate
                _sys_exit(exc, debug)
            except Exception as exc:  # a bug, or an error we did not anticipate
                if debug:
                    raise
                where = _spec_file(bound)
                fail(escape((f"{where}: " if where else "") + first_line(exc))
                     + " (run again with --debug for the traceback)")
            raise typer.Exit(2)

        return wrapper  # type: ignore[return-value]

    return decorate


def _sys_exit(exc: SystemExit, debug: bool) -> None:
    if debug:
        import traceback

        traceback.print_exc()
    fail(escape(f"the model's code called sys.exit({exc.code!r})")
         + ("" if debug else " (run again with --debug for the traceback)"))
