"""``eqaudit validate``: check a spec or fine-tune config without running a model (keys, files,
named tensors, and a dry run of every check's input transforms)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .errors import handles_errors
from .options import DebugOpt, QuietOpt, read_spec_or_config
from .output import out


@handles_errors()
def validate(
    spec: Annotated[Path, typer.Argument(help="The spec YAML to check.")],
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Check a spec or fine-tune config (keys, transforms, distances, files) without running a model."""
    from .validation import check_config_data, check_files, dry_run_transforms

    the_spec, config = read_spec_or_config(spec)
    check_files(the_spec)
    if config is not None:
        check_config_data(config)
    dry_run_transforms(the_spec)
    if not quiet:
        n = len(the_spec.checks)
        out.print(
            f"[green]ok[/]: {spec} — {n} check{'s' * (n != 1)}, {the_spec.samples} samples, "
            f"input shape {list(the_spec.input.shape) or '(from data)'}",
            highlight=False,
        )
