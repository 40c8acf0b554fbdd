"""The fine-tune's files on disk: the resumable state (saved, loaded, checked against the run),
the fine-tuned model as safetensors, and temporary files a killed run left behind."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ArgumentError, EqauditError, first_line
from ..io.atomic import atomic_write, temp_prefix
from ..io.files import require_regular_file
from .config import FinetuneConfig

STATE_FORMAT = "eqaudit.finetune.state"
#: 2: the sha256 of every file the update reads ("inputs"), checked on resume
STATE_VERSION = 2

#: The entries of a state file and their types (checked before any is used).
STATE_ENTRIES: dict[str, type | tuple[type, ...]] = {
    "fingerprint": str, "seed": int, "total_steps": int, "step": int, "model": dict, "optimizer": dict,
    "rng": dict, "curve": dict, "before": dict, "metrics_before": dict, "train_elapsed_s": (int, float),
    "inputs": dict,
}
_TYPE_NAMES = {str: "a string", int: "an integer", dict: "a mapping", list: "a list", (int, float): "a number"}


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


def state_error(path: Path, key: str | None, message: str) -> EqauditError:
    """A damaged resumable state: exit 2, naming the state file and the entry."""
    return EqauditError(message, file=path, key=key,
                        hint="the resumable state is damaged; run with --force to start over")


def resume_error(cfg: FinetuneConfig, message: str, hint: str | None = None) -> EqauditError:
    """A resume that cannot continue: an error of the ``resume`` argument (the CLI's ``--resume``),
    located in the config file."""
    return ArgumentError("resume", message, hint=hint).located(file=cfg.file)


def load_state(cfg: FinetuneConfig, path: Path, device: Any) -> dict[str, Any]:
    """The resumable state at ``path``, refused unless it is a complete eqaudit state of the run
    that ``cfg`` describes. Read with ``torch.load(weights_only=True)``: tensors and plain Python
    values only, never code."""
    import torch

    if not os.path.lexists(path):
        raise resume_error(cfg, f"no resumable state at '{path}'", "run without --resume to start from the beginning")
    try:
        require_regular_file(path, "resumable state")
        state = torch.load(str(path), map_location=device, weights_only=True)
    except EqauditError as exc:
        raise resume_error(cfg, exc.message, exc.hint) from None
    except Exception as exc:
        raise resume_error(cfg, f"cannot read the resumable state '{path}': {first_line(exc)}",
                           "run with --force to start over") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise resume_error(cfg, f"'{path}' is not an eqaudit fine-tune state")
    if state.get("version") != STATE_VERSION:
        raise resume_error(cfg, f"'{path}' has state version {state.get('version')}, "
                           f"this eqaudit reads {STATE_VERSION}", "run with --force to start over")
    check_state(path, state)
    if state["fingerprint"] == cfg.fingerprint and state["seed"] != cfg.spec.seed:  # --seed
        raise resume_error(cfg, f"the state '{path}' was saved by a run with seed {state['seed']}, this run has "
                           f"seed {cfg.spec.seed}", "resume with the run's seed, or run with --force to start over")
    if state["fingerprint"] != cfg.fingerprint:
        raise resume_error(
            cfg, f"the config changed since the state '{path}' was saved (only steps, epochs, output, "
            "checkpoint_every, log_every, dynamics and device may change)",
            "restore the config, or run with --force to start over")
    return state


def check_state(path: Path, state: Mapping[str, Any]) -> None:
    """Every entry of a state present and of its type, the step count >= 0 (else exit 2 at the entry)."""
    import torch

    for key, kind in STATE_ENTRIES.items():
        if key not in state:
            raise state_error(path, key, "missing")
        value = state[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise state_error(path, key, f"expected {_TYPE_NAMES[kind]}, got {type(value).__name__}")
    if state["step"] < 0:
        raise state_error(path, "step", f"is {state['step']}, expected a step count >= 0")
    if not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        raise state_error(path, "model", "expected a state dict of tensors")
    rng = state["rng"]
    cuda_ok = rng.get("cuda") is None or isinstance(rng["cuda"], torch.Tensor)
    if not isinstance(rng.get("cpu"), torch.Tensor) or not cuda_ok:
        raise state_error(path, "rng", "expected the generator states {cpu: tensor, cuda: tensor or null}")
    curve = state["curve"]
    if not isinstance(curve.get("points"), list) or not isinstance(curve.get("window"), dict):
        raise state_error(path, "curve", "expected {points: [...], window: {...}}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in state["inputs"].items()):
        raise state_error(path, "inputs", "expected a mapping of keys to sha256 digests")
    for key in ("curve", "before", "metrics_before"):  # written to the JSON report at the end
        if not _is_plain(state[key]):
            raise state_error(path, key, "expected plain values (numbers, strings, lists and mappings)")


def _is_plain(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is JSON-like data, nested at most 32 deep (a pickle can build a cycle)."""
    if depth > 32:
        return False
    if value is None or isinstance(value, (str, int, float)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v, depth + 1) for k, v in value.items())
    return False


def save_model_safetensors(model: Any, path: Path, metadata: Mapping[str, str]) -> None:
    """Write the model's state dict as safetensors, atomically; the same model and metadata give
    the same bytes (safetensors writes its metadata in hash-map order, so the header is sorted)."""
    from safetensors.torch import save_model

    def write(tmp: str) -> None:
        save_model(model, tmp, metadata=dict(metadata), force_contiguous=True)
        sort_safetensors_metadata(Path(tmp))

    atomic_write(path, write)


def sort_safetensors_metadata(path: Path) -> None:
    """Rewrite the header of the safetensors file ``path`` with its ``__metadata__`` keys sorted
    (the tensor entries keep their order; the header is padded to 8 bytes with spaces)."""
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + size :])
