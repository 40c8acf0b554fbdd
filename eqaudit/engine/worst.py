"""The samples behind a report, for the HTML report: after an audit, the first samples (at most
256) are evaluated again with :func:`eqaudit.engine.evaluate.evaluate_checks` on the same points
and draws (same seed, same sample indices), giving each check's per-sample errors and, for the
checks asked, the worst samples with their input, transformed input and both outputs. The
audit's numbers are not touched: this only reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from transforms_zoo import SampleRNG

from ..spec import Spec
from .device import model_dtype, resolve_device
from .evaluate import TransformedInput, evaluate_checks
from .forward import forward_rows
from .sampling import PointSampler, rows_by_check

LIMIT = 256


@dataclass(frozen=True)
class Example:
    """One sample of a check: ``expected`` is ``f_out(model(x))``, ``got`` is ``model(f_in(x))``."""

    index: int
    error: float
    x: torch.Tensor
    transformed: torch.Tensor
    expected: torch.Tensor
    got: torch.Tensor
    element: str | None = None


@dataclass(frozen=True)
class CheckSamples:
    """A check's per-sample errors on the first samples, and its worst ones (when asked)."""

    name: str
    errors: list[float]
    worst: list[Example] = field(default_factory=list)


def check_samples(spec: Spec, *, checkpoint: Any = None, trust_checkpoint: bool = False, device: Any = "auto",
                  seed: int | None = None, limit: int = LIMIT, worst_of: set[str] | frozenset[str] = frozenset(),
                  k: int = 3, model: Any = None) -> list[CheckSamples]:
    """Per-sample errors of every check on the first ``limit`` samples of ``spec`` (its seed,
    or ``seed``), and the ``k`` worst samples of the checks named in ``worst_of``."""
    if seed is not None:
        spec = spec.replace(seed=seed)
    if model is None:
        model = spec.build_model(checkpoint, trust_checkpoint=trust_checkpoint)
    dev = resolve_device(device, model if isinstance(model, torch.nn.Module) else None)
    if isinstance(model, torch.nn.Module):
        was_training = model.training
        model.to(dev).eval()
    n = max(1, min(limit, spec.samples))
    dtype = model_dtype(model) if isinstance(model, torch.nn.Module) else torch.get_default_dtype()
    try:
        with torch.inference_mode():
            return _evaluate(model, spec, PointSampler(spec, dev, dtype), dev, n, worst_of, k)
    finally:
        if isinstance(model, torch.nn.Module) and was_training:
            model.train(True)


def _evaluate(model: Any, spec: Spec, sampler: PointSampler, dev: torch.device, n: int,
              worst_of: set[str] | frozenset[str], k: int) -> list[CheckSamples]:
    rng = SampleRNG.for_range(spec.seed, 0, n, dev)
    x = sampler.draw(rng)
    y = forward_rows(model, x, spec, "input.shape", None)
    rows = None
    if spec.num_funcs is not None:
        rows = rows_by_check(rng.child("num_funcs").choice(spec.num_funcs, len(spec.checks)), len(spec.checks))
    evaluation = evaluate_checks(model, spec.checks, x, y, rng, spec, rows=rows)
    found = []
    for result in evaluation.checks:
        check = spec.checks[result.check_index]
        errors = [float(e) for e in result.errors.detach().cpu().tolist()]
        worst: list[Example] = []
        if check.name in worst_of and check.mode != "lie":
            items = [it for it in evaluation.transformed if it.check_index == result.check_index]
            worst = _worst(check, items, result, x, y, k)
        found.append(CheckSamples(check.name, errors, worst))
    return found


def _worst(check: Any, items: list[TransformedInput], result: Any, x: torch.Tensor, y: torch.Tensor,
           k: int) -> list[Example]:
    """The ``k`` largest errors over the check's items (one per group element, one per draw of a
    worst_of check, else one). A worst_of check shows each sample once, with its error (the
    maximum over the draws, as evaluated) at the draw that gave it (the record's argmax)."""
    errors = result.errors.detach().cpu().tolist()
    argmax = result.worst.argmax.tolist() if result.worst is not None else None
    candidates = []
    for item in items:
        values = errors if item.element is None else result.element_errors[item.element].detach().cpu().tolist()
        candidates.extend((float(e), i, item) for i, e in enumerate(values)
                          if item.draw is None or argmax[i] == item.draw)  # type: ignore[index]
    candidates.sort(key=lambda c: -c[0] if c[0] == c[0] else 0.0)
    examples: list[Example] = []
    views: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for error, i, item in candidates[:k]:
        row = int(item.rows[i]) if item.rows is not None else i
        transformed, expected = _view(check, item, x, y, views)
        label = None if item.element is None else check.group.elements[item.element].describe()
        assert item.outputs is not None
        examples.append(Example(row, error, x[row].cpu(), transformed[i].cpu(), expected[i].cpu(),
                                item.outputs[i].cpu(), label))
    return examples


def _view(check: Any, item: TransformedInput, x: torch.Tensor, y: torch.Tensor,
          views: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``f_in(x)`` and ``f_out(y)`` of the item's rows, with the item's own draw (cached)."""
    if id(item) not in views:  # the item's whole batch, as the evaluation drew it
        xs = x if item.rows is None else x[item.rows]
        ys = y if item.rows is None else y[item.rows]
        if item.element is None:  # a worst_of draw: its own transforms (a grid's are not the check's)
            t_in = item.t_in if item.t_in is not None else check.input
            t_out = item.t_out if item.t_out is not None else check.output
            views[id(item)] = (t_in.apply(xs, item.p_in), t_out.apply(ys, item.p_out))
        else:
            element = check.group.elements[item.element]
            views[id(item)] = (element.apply(xs, None), element.apply(ys, None) if check.both else ys)
    return views[id(item)]
