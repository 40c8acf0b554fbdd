"""The files a fine-tune reads, by config key, and the sha256 of their contents: outputs must not
replace them, and a resumed run must read the same bytes as the run it continues."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from ..errors import EqauditError
from ..io.files import require_regular_file
from .config import FinetuneConfig

#: What the file at each key is, for messages (keys of checks' code: "code").
_WHAT = {"config": "config", "model.checkpoint": "checkpoint", "model.factory": "model code",
         "input.data": "input data file", "data.path": "data file", "data.val_path": "validation data file",
         "data.dataset": "dataset code", "data.val_dataset": "validation dataset code", "task_loss": "task-loss code",
         "input.dataset": "input dataset code"}


def describe(key: str) -> str:
    """What the input at ``key`` is, in words (``data file``, ``model code``...)."""
    if key.startswith("input.data["):
        return "input image"
    return _WHAT.get(key, "code")


def input_files(cfg: FinetuneConfig) -> dict[str, Path]:
    """Every file the fine-tune reads, by the key that names it: the config (``config``), the spec's
    files (checkpoint, input data, factory and transform/distance code) and the training data,
    validation data, dataset and task-loss code files."""
    from transforms_zoo._resolve import reference_file

    files = {("config" if key == "spec" else key): path for key, path in cfg.spec.input_files().items()}
    data = cfg.data
    for key, path in (("data.path", data.path), ("data.val_path", data.val_path)):
        if path is not None:
            files[key] = path.resolve()
    refs = {"data.dataset": data.dataset, "data.val_dataset": data.val_dataset,
            "task_loss": cfg.task_loss if ":" in cfg.task_loss else None}
    for key, ref in refs.items():
        code = reference_file(ref, cfg.base_dir) if ref else None
        if code is not None:
            files[key] = code.resolve()
    return files


def file_digest(path: Path) -> str:
    """The sha256 of the file's contents (hex); raises OSError when it cannot be read."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_digests(cfg: FinetuneConfig) -> dict[str, str]:
    """The sha256 of every file the update depends on, by key (the config file itself is left
    out: its keys that change the update are in ``cfg.fingerprint``, the others may change)."""
    digests = {}
    for key, path in input_files(cfg).items():
        if key == "config":
            continue
        try:
            require_regular_file(path, describe(key))
            digests[key] = file_digest(path)
        except EqauditError as exc:
            raise cfg.error(key, exc.message, exc.hint) from None
        except OSError as exc:
            raise cfg.error(key, f"cannot read {describe(key)} '{path}': {exc.strerror or exc}") from None
    return digests


def check_same_inputs(cfg: FinetuneConfig, saved: Mapping[str, str], current: Mapping[str, str],
                      state: Path) -> None:
    """Refuse to resume when a file the update depends on changed since the run started (exit 2,
    at the key of the file that changed)."""
    files = input_files(cfg)
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) == current.get(key):
            continue
        hint = f"restore it, or run with --force to start over (the state is '{state}')"
        if key not in current or key not in saved:
            raise cfg.error(key if key in current else None,
                            f"the files the run reads changed since it started ({key} "
                            f"{'is new' if key in current else 'is no longer read'})", hint)
        raise cfg.error(key, f"{describe(key)} '{files[key].name}' changed since the run started", hint)
