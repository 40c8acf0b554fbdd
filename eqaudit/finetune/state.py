"""The fine-tune's files on disk: the resumable state (saved, loaded, checked against the run),
the fine-tuned model as safetensors, and temporary files a killed run left behind."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import EqauditError
from ..io.atomic import atomic_write, temp_prefix
from .config import FinetuneConfig

STATE_FORMAT = "eqaudit.finetune.state"
STATE_VERSION = 1


def remove_stale_temps(paths: Iterable[Path]) -> list[Path]:
    """Delete temporary files that a killed run left beside ``paths`` (``.NAME.*.tmp``)."""
    removed = []
    for path in paths:
        pattern = os.path.join(glob.escape(str(path.parent)), glob.escape(temp_prefix(path)) + "*.tmp")
        for stale in glob.glob(pattern):
            try:
                os.unlink(stale)
                removed.append(Path(stale))
            except OSError:
                pass
    return removed


def save_state(path: Path, state: Mapping[str, Any]) -> None:
    """Write the resumable state atomically."""
    import torch

    atomic_write(path, lambda tmp: torch.save(dict(state), tmp))


def load_state(cfg: FinetuneConfig, path: Path, device: Any) -> dict[str, Any]:
    """The resumable state at ``path``, refused unless it continues the run that ``cfg`` describes."""
    import torch

    if not path.is_file():
        raise EqauditError(f"no resumable state at '{path}'", file=cfg.file, key="--resume",
                           hint="run without --resume to start from the beginning")
    try:
        state = torch.load(str(path), map_location=device, weights_only=True)
    except Exception as exc:
        raise EqauditError(f"cannot read the resumable state '{path}': {type(exc).__name__}: {exc}",
                           file=cfg.file, key="--resume", hint="run with --force to start over") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise EqauditError(f"'{path}' is not an eqaudit fine-tune state", file=cfg.file, key="--resume")
    if state.get("version") != STATE_VERSION:
        raise EqauditError(f"'{path}' has state version {state.get('version')}, this eqaudit reads {STATE_VERSION}",
                           file=cfg.file, key="--resume")
    if state.get("fingerprint") != cfg.fingerprint or state.get("seed") != cfg.spec.seed:
        raise EqauditError(
            f"the config changed since the state '{path}' was saved (only steps, epochs, output, "
            "checkpoint_every, log_every, dynamics and device may change)",
            file=cfg.file, key="--resume", hint="restore the config, or run with --force to start over")
    return state


def save_model_safetensors(model: Any, path: Path, metadata: Mapping[str, str]) -> None:
    """Write the model's state dict as safetensors, atomically."""
    from safetensors.torch import save_model

    atomic_write(path, lambda tmp: save_model(model, tmp, metadata=dict(metadata), force_contiguous=True))
