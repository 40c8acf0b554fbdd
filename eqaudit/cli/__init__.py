"""The ``eqaudit`` command line: thin commands over the library, one module per command
(measure, sweep, validate, transforms, finetune), the Typer app that loads them lazily (app), one
output sink (output) and one place where errors become one line and exit 2 (errors)."""

from .app import app, main

__all__ = ["app", "main"]
