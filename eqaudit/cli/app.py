"""The ``eqaudit`` Typer app: commands registered lazily (``eqaudit measure`` imports only the
measure command, never the fine-tune code), and usage errors as one line and exit 2.

Exit codes: 0 every check within its threshold; 1 some check exceeds it; 2 could not run
(a usage error too); 130 interrupted.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator, MutableMapping
from typing import Any

import typer
from typer.core import TyperGroup

#: Command name -> (module, function), imported on first use.
COMMANDS = {
    "measure": ("eqaudit.cli.measure", "measure"),
    "validate": ("eqaudit.cli.validate", "validate"),
    "transforms": ("eqaudit.cli.transforms", "transforms"),
    "sweep": ("eqaudit.cli.sweep", "sweep"),
    "finetune": ("eqaudit.cli.finetune", "finetune_command"),
    "compare": ("eqaudit.cli.compare", "compare"),
    "demo": ("eqaudit.cli.demo", "demo"),
    "init": ("eqaudit.cli.init", "init"),
    "schema": ("eqaudit.cli.schema", "schema"),
}


def _build(name: str) -> Any:
    """The Click command of ``name``, built by Typer from its function."""
    module, attr = COMMANDS[name]
    function = getattr(importlib.import_module(module), attr)
    single = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                         context_settings={"help_option_names": ["-h", "--help"]})
    single.command(name)(function)
    command = typer.main.get_command(single)
    command.name = name
    return command


class _LazyCommands(MutableMapping):
    """The group's commands by name; a command's module is imported when it is looked up."""

    def __init__(self) -> None:
        self._built: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._built:
            if name not in COMMANDS:
                raise KeyError(name)
            self._built[name] = _build(name)
        return self._built[name]

    def __setitem__(self, name: str, command: Any) -> None:
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        del self._built[name]

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*COMMANDS, *self._built]))

    def __len__(self) -> int:
        return len(set(COMMANDS) | set(self._built))


class LazyGroup(TyperGroup):
    """A Typer group whose commands load on use, and whose usage errors are one line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = _LazyCommands()

    def list_commands(self, ctx: Any) -> list[str]:  # noqa: D102 - the registry's order
        return list(self.commands)

    def main(self, *args: Any, **kwargs: Any) -> Any:  # noqa: D102 - see class docstring
        standalone = kwargs.pop("standalone_mode", True)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except typer.Exit as exc:
            code = exc.exit_code
        except typer.Abort:
            from .output import fail

            fail("aborted")
            code = 1
        except Exception as exc:  # Click's own errors (vendored by Typer): duck-typed
            if not hasattr(exc, "format_message") or not hasattr(exc, "exit_code"):
                raise
            code = _usage_error(exc)
        if not standalone:
            return code
        sys.exit(code if isinstance(code, int) else 0)


def _usage_error(exc: Any) -> int:
    """Print a usage error as one line (or the help, for a command given no arguments); exit 2."""
    from .errors import usage_error_line
    from .output import fail

    if type(exc).__name__ == "NoArgsIsHelpError":  # the help was rendered when it was raised
        text = exc.format_message()
        if text:
            typer.echo(text, err=True)
    else:
        fail(usage_error_line(exc))
    return 2


app = typer.Typer(
    name="eqaudit",
    cls=LazyGroup,
    help="Audit how equivariant a trained PyTorch model is, gate CI on it, and fine-tune toward it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from .._version import __version__

        typer.echo(f"eqaudit {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Audit how equivariant a trained PyTorch model is, gate CI on it, and fine-tune toward it."""


def main() -> None:
    """Console-script entry point (also ``python -m eqaudit``): the process's allocator set for
    repeated model calls (:mod:`eqaudit.allocator`), then the app."""
    from ..allocator import steady_allocator

    steady_allocator()
    app()
