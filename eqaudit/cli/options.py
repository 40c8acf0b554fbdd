"""What several commands share: option aliases, and reading ``--spec`` (a spec, or the spec part
of a fine-tune config, whose training keys are then validated too)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors; the exit code tells.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:K.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed (overrides the spec).")]
TrustOpt = Annotated[
    bool,
    typer.Option("--trust-checkpoint",
                 help="Allow loading a pickled whole model (this executes code stored in the file)."),
]


def load_spec_file(path: Path) -> Any:
    """The :class:`~eqaudit.spec.Spec` in ``path`` (of a fine-tune config: its spec part)."""
    return read_spec_or_config(path)[0]


def read_spec_or_config(path: Path) -> tuple[Any, Any]:
    """``(spec, config)``: a spec file gives ``(spec, None)``; a fine-tune config gives its spec
    and the whole config, training keys validated. The fine-tune code is imported only for a file
    with keys that a spec lacks (``eqaudit measure`` on a spec loads none of it)."""
    from ..io.yaml_source import load_yaml
    from ..spec import parse_spec
    from ..spec.parse import SPEC_KEYS

    src = load_yaml(path)
    base = Path(path).resolve().parent
    if isinstance(src.data, dict) and not set(src.data) <= set(SPEC_KEYS):
        from ..finetune.config import FINETUNE_KEYS, parse_config

        if any(k in FINETUNE_KEYS for k in src.data):
            config = parse_config(src, base_dir=base)
            return config.spec, config
    return parse_spec(src, base_dir=base), None
