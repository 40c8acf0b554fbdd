"""The ``eqaudit`` command line: thin commands over the library."""

from .main import app, main

__all__ = ["app", "main"]
