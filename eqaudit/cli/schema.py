"""``eqaudit schema``: print the JSON Schema of specs (or, with ``--finetune``, of fine-tune
configs) for editors: ``# yaml-language-server: $schema=eqaudit.schema.json`` in a spec."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import handles_errors
from .options import DebugOpt

FinetuneOpt = Annotated[bool, typer.Option("--finetune", help="The schema of fine-tune configs instead of specs.")]
OutputOpt = Annotated[Optional[Path], typer.Option("--output", "-o", help="Write it to this file instead of stdout.")]


@handles_errors()
def schema(finetune: FinetuneOpt = False, output: OutputOpt = None, debug: DebugOpt = False) -> None:
    """Print the JSON Schema (draft 2020-12) of specs or fine-tune configs."""
    import json

    from ..schema import build_schema

    text = json.dumps(build_schema(finetune), indent=2) + "\n"
    if output is None:
        typer.echo(text, nl=False)
        return
    from ..io.atomic import write_text_atomic

    write_text_atomic(output, text)
