"""Which checks share one draw between their two sides (``both:``) and which draw the same random
transform independently on each side (a note: that measures two different transforms, which is
rarely what was meant)."""

from __future__ import annotations

from typing import Any

import torch

from transforms_zoo import SampleRNG


def shared_draws(spec: Any) -> frozenset[str]:
    """The names of the checks written with ``both:`` (one draw for both sides)."""
    return frozenset(c.name for c in spec.checks if c.both)


def independent_draw_notes(spec: Any) -> list[str]:
    """A note per check whose input and output are the same random transform, drawn independently."""
    notes = []
    for c in spec.checks:
        if c.both or c.group is not None or c.mode == "lie" or c.input.describe() != c.output.describe():
            continue
        if type(c.input) is type(c.output) and _is_random(c.input):
            notes.append(f"check '{c.name}': input and output are the same random transform {c.input.describe()}, "
                         "drawn independently on each side; write 'both:' for one shared draw")
    return notes


def _is_random(t: Any) -> bool:
    """Whether two streams draw different parameters for ``t`` (False when drawing fails)."""
    try:
        a = t.sample(SampleRNG.for_range(1, 0, 8))
        b = t.sample(SampleRNG.for_range(2, 0, 8))
    except Exception:  # noqa: BLE001 - a transform that cannot draw here is left alone
        return False
    return not _same(a, b)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if hasattr(a, "__dict__") and type(a) is type(b):
        return _same(vars(a), vars(b))
    return bool(a == b)
