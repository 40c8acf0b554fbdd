"""``torch.save`` files and other pickles: loaded with ``weights_only=True`` (tensors and plain
containers only), and a pickle that names Python code is refused unless the user trusts it.

A raw pickle that is not torch's legacy format (``pickle.dump(model, f)``, any protocol) is
reported as a pickle that may run code, not as a corrupt file; torch's warnings about it never
print before the error.
"""

from __future__ import annotations

import pickle
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..errors import EqauditError, squeezed

__all__ = ["TRUST_HINT", "is_raw_pickle", "load_pickle"]

TRUST_HINT = (
    "pass --trust-checkpoint (trust_checkpoint=True) only if you trust the file, "
    "or save model.state_dict() instead and set model.factory"
)
_CORRUPT_HINT = ("the file may be corrupt or truncated, or not a safetensors / torch.save / TorchScript "
                 "/ torch.export file; re-save it")
#: The first bytes of torch's legacy (non-zip) ``torch.save`` format: protocol 2, then its magic number.
_LEGACY_TORCH = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def is_raw_pickle(head: bytes) -> bool:
    """Whether a file starting with ``head`` is a plain pickle (protocol 2 to 5) rather than a
    ``torch.save`` file (a zip archive, or the legacy format that starts with torch's magic number)."""
    protocol = head[1:2]
    return head[:1] == b"\x80" and protocol in (b"\x02", b"\x03", b"\x04", b"\x05") and not head.startswith(_LEGACY_TORCH)


@contextmanager
def on_sys_path(base_dir: Path | None) -> Iterator[None]:
    """Put ``base_dir`` at the front of ``sys.path`` (trusted unpickling of classes beside the spec)."""
    added = base_dir is not None and str(base_dir) not in sys.path
    if added:
        sys.path.insert(0, str(base_dir))
    try:
        yield
    finally:
        if added:
            try:
                sys.path.remove(str(base_dir))
            except ValueError:
                pass


def _unpickling_reason(text: str) -> str:
    m = re.search(r"WeightsUnpickler error:(.*?)(?:Check the documentation|$)", text, re.DOTALL)
    if m and m.group(1).strip():
        return squeezed(m.group(1), 160)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return squeezed(lines[-1] if lines else text, 160)


def load_pickle(path: Path, head: bytes, trust: bool, base_dir: Path | None,
                error: Callable[[str, str], EqauditError]) -> Any:
    """The object in the ``torch.save`` file or pickle at ``path`` (``head``: its first bytes).

    Untrusted: ``torch.load(weights_only=True)``; a pickle that references Python code, or a raw
    pickle, raises ``error(message, hint)`` without running anything. Trusted: full unpickling,
    with ``base_dir`` importable."""
    if is_raw_pickle(head):
        if not trust:
            raise error("the file is a pickle (may run code): pickle.dump output, not a torch.save "
                        "checkpoint; loading it would execute code from the file", TRUST_HINT)
        return _trusted(path, base_dir, error, raw=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols: the error says it all
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        refs = re.findall(r"GLOBAL ([\w.]+)", text)
        if "Unsupported global" not in text and not refs:
            raise error(f"not a readable PyTorch checkpoint ({_unpickling_reason(text)})", _CORRUPT_HINT) from None
        if not trust:
            what = ", ".join(dict.fromkeys(refs)) or "Python classes"
            raise error(f"the file is a pickle that references Python code ({what}), e.g. a whole pickled "
                        "nn.Module; loading it would execute code from the file", TRUST_HINT) from None
    except Exception as exc:  # noqa: BLE001 - zip errors, EOF, bad magic number, ...
        raise error(f"not a readable PyTorch checkpoint ({type(exc).__name__}: {squeezed(exc, 200)})",
                    _CORRUPT_HINT) from None
    return _trusted(path, base_dir, error, raw=False)


def _trusted(path: Path, base_dir: Path | None, error: Callable[[str, str], EqauditError], raw: bool) -> Any:
    """Full unpickling: only with ``--trust-checkpoint``."""
    try:
        with on_sys_path(base_dir), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if raw:
                with open(path, "rb") as fh:
                    return pickle.load(fh)  # noqa: S301 - the user trusts this file
            return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - anything the pickled code raises
        raise error(f"loading it with --trust-checkpoint failed: {type(exc).__name__}: {squeezed(exc)}",
                    "the classes it was pickled with must be importable (same module path as when it was saved)"
                    ) from None
