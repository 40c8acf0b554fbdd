"""The ``eqaudit finetune`` command (placeholder until the fine-tune loop lands)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .errors import EqauditError


def finetune_command(
    config: Annotated[Path, typer.Argument(help="The fine-tune config YAML (a spec plus training keys).")],
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    """Fine-tune a model with the equivariance penalty added to its task loss."""
    raise EqauditError("fine-tuning is not available in this build", file=str(config))
