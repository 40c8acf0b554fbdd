"""The evaluation core: the per-sample equivariance errors of checks at given points.

Everything that measures a check calls :func:`evaluate_checks`: the audit's chunks, the sweep
(an audit of a swept spec), the inverse-output hints and the noise floor
(:mod:`eqaudit.engine.extras`), the differentiable :class:`eqaudit.EquivarianceError` and the
fine-tune penalty. A check is one of three strategies behind the same call:

* ``sample`` (the default): draw the check's parameters once per sample, compare
  ``f_out(y)`` with ``model(f_in(x))`` (``both:``: the same draw on both sides), optionally
  masked to the pixels both transforms keep in frame (``mask: valid``);
* ``group:``: every element of a finite group on every sample, the check's error being the mean
  over the elements (each element's errors are returned too);
* ``mode: lie``: the norm of the Lie derivative along the transform's path
  (:mod:`eqaudit.engine.lie`), its own forward-mode pass.

A sampled check with ``worst_of:`` is K such draws of the same points, K items of the same
fused forward pass, whose per-sample maximum is the check's error (:mod:`eqaudit.engine.worst_of`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ContextManager

import torch

from transforms_zoo import SampleRNG, TransformError

from ..errors import first_line
from .compare import batched_distances, check_distance
from .forward import Locator, batch_dependent_width, forward_once, forward_rows, is_oom, packed, row_pieces
from .lie import lie_errors
from .worst_of import Worst, combine, draws

__all__ = ["CheckErrors", "Evaluation", "TransformedInput", "evaluate_checks"]


@dataclass(eq=False)
class TransformedInput:
    """One check's (or one group element's) transformed inputs, on their way through the model."""

    check_index: int
    rows: torch.Tensor | None  # the rows of ``x`` this check runs on; None: every row
    inputs: torch.Tensor | None  # ``f_in(x)``; released (None) once forwarded
    rows_in_call: int
    p_in: Any
    p_out: Any
    in_key: str
    out_key: str
    element: int | None = None  # group checks: the element's index
    valid: torch.Tensor | None = None  # mask: valid: the pixels the input transform keeps in frame
    outputs: torch.Tensor | None = None  # ``model(f_in(x))``
    call: int = 0  # which model call carried these rows (0: the base forward), and where in it
    offset: int = 0
    draw: int | None = None  # worst_of checks: the draw's index
    t_in: Any = None  # worst_of checks: the draw's input transform (None: the check's)
    t_out: Any = None  # worst_of checks: the draw's output transform (None: the check's)


@dataclass(frozen=True)
class CheckErrors:
    """One check's per-sample errors: ``errors[i]`` belongs to row ``rows[i]`` of ``x`` (to row
    ``i`` when ``rows`` is None). Group checks: ``errors`` is the mean over the elements and
    ``element_errors[e]`` element ``e``'s errors (None when the check drew no rows)."""

    check_index: int
    rows: torch.Tensor | None
    errors: torch.Tensor
    element_errors: tuple[torch.Tensor, ...] | None = None
    #: ``worst_of`` checks: which draw gave each row's maximum, and its parameter value.
    worst: Worst | None = None


@dataclass(frozen=True)
class Evaluation:
    """The result of :func:`evaluate_checks`: one entry of ``checks`` per evaluated check (in the
    order of ``chosen``), and the transformed inputs (call and offset of each, for the layer taps)."""

    checks: list[CheckErrors]
    transformed: list[TransformedInput]


def evaluate_checks(
    model: Any,
    checks: Sequence[Any],
    x: torch.Tensor,
    y: torch.Tensor,
    rng: SampleRNG,
    locate: Locator,
    *,
    chosen: Sequence[int] | None = None,
    rows: Sequence[torch.Tensor | None] | None = None,
    fuse: bool = True,
    max_rows: int | None = None,
    distance_dtype: torch.dtype | None = torch.float64,
    untapped: Callable[[], ContextManager[Any]] | None = None,
) -> Evaluation:
    """Per-sample errors of ``checks[j]`` for every ``j`` in ``chosen`` (default: all) at points ``x``.

    Args:
        model: a callable on batches.
        checks: :class:`eqaudit.spec.CheckSpec` objects (``input``, ``output``, ``both``,
            ``distance``, ``mode``, ``group``, ``mask``, ``stream_name``).
        x: the points, ``(n, *shape)``.
        y: ``model(x)``, computed once by the caller and shared by every check (see
            :func:`eqaudit.engine.forward.forward_rows`).
        rng: the draws of the rows of ``x``; check ``j`` draws its parameters from
            ``rng.child(f"check:{checks[j].stream_name}")`` (restricted to its rows).
        locate: turns a failure into an error at ``checks[j].input`` / ``.output`` / ``.both`` /
            ``.group`` / ``.mask`` / ``.mode`` / ``.distance`` (a spec, a fine-tune config, or the
            regularizer's argument namer).
        chosen: the check indices to evaluate. ``rows``: per chosen check, the rows of ``x`` it
            runs on (None: all; ``num_funcs``).
        fuse: True: every check's transformed inputs of the same shape go through ONE model call
            (in calls of at most ``max_rows`` rows when given), and built-in distances of the same
            name and shape are computed in one call; nothing is read back to the host. False:
            each check alone, in order (draw, transform the inputs, transform the outputs,
            forward, distance), as the original regularizer does with torch's global RNG.
        distance_dtype: the dtype the distances compute in (float64 for the audit); None keeps
            the outputs' dtype, so gradients flow at the model's precision.
        untapped: a context manager factory wrapping the Lie checks' own forward passes (the
            layer taps count calls and must not see them).

    Returns:
        An :class:`Evaluation`. Gradients: the errors are differentiable with respect to the
        model's parameters (and to ``x``) when the caller runs with gradients enabled, except
        Lie-derivative errors, which are detached. Out-of-memory errors are re-raised as they are.
    """
    order = list(range(len(checks))) if chosen is None else list(chosen)
    rows_of = list(rows) if rows is not None else [None] * len(order)
    ctx = _Context(model, checks, locate, max_rows, distance_dtype, untapped)
    if fuse:
        return ctx.fused(x, y, rng, order, rows_of)
    results: list[CheckErrors] = []
    transformed: list[TransformedInput] = []
    for j, r in zip(order, rows_of):
        one = ctx.sequential(x, y, rng, j, r)
        results.extend(one.checks)
        transformed.extend(one.transformed)
    return Evaluation(results, transformed)


class _Context:
    """The arguments shared by the steps of one evaluation."""

    def __init__(self, model: Any, checks: Sequence[Any], locate: Locator, max_rows: int | None,
                 distance_dtype: torch.dtype | None, untapped: Callable[[], ContextManager[Any]] | None) -> None:
        self.model, self.checks, self.locate, self.max_rows = model, checks, locate, max_rows
        self.distance_dtype = distance_dtype
        self.untapped = untapped or contextlib.nullcontext

    # -- the two orders of the same steps ---------------------------------------------------------
    def fused(self, x: torch.Tensor, y: torch.Tensor, rng: SampleRNG, order: list[int],
              rows_of: list[torch.Tensor | None]) -> Evaluation:
        finished: list[CheckErrors] = []  # Lie checks and checks without rows: no fused forward
        pending: list[TransformedInput] = []
        for j, r in zip(order, rows_of):
            direct = self.transform_inputs(x, rng, j, r, pending)
            if direct is not None:
                finished.append(direct)
        self.forward_fused(pending)
        try:
            pairs = [self.compared(item, self.output_side(item, y)) for item in pending]
        except Exception as exc:
            if not is_oom(exc):
                self.refuse_batch_dependent_width(x, y, pending)
            raise
        errors = self.distances(pending, pairs)
        return Evaluation(_ordered(order, finished + _assembled(self.checks, pending, errors)), pending)

    def sequential(self, x: torch.Tensor, y: torch.Tensor, rng: SampleRNG, j: int,
                   r: torch.Tensor | None) -> Evaluation:
        pending: list[TransformedInput] = []
        direct = self.transform_inputs(x, rng, j, r, pending)
        if direct is not None:
            return Evaluation([direct], [])
        outs = [self.output_side(item, y) for item in pending]
        for call, item in enumerate(pending, start=1):
            assert item.inputs is not None
            item.outputs = forward_rows(self.model, item.inputs, self.locate, item.in_key, self.max_rows)
            item.inputs, item.call, item.offset = None, call, 0
        errors = [self.distance(item.check_index, *self.compared(item, a)) for item, a in zip(pending, outs)]
        return Evaluation(_assembled(self.checks, pending, errors), pending)

    # -- the steps --------------------------------------------------------------------------------
    def transform_inputs(self, x: torch.Tensor, rng: SampleRNG, j: int, rows: torch.Tensor | None,
                         pending: list[TransformedInput]) -> CheckErrors | None:
        """Queue check ``j``'s transformed inputs in ``pending``; a Lie check, or a check with
        no rows, is finished here and returned."""
        check, where = self.checks[j], f"checks[{j}]"
        crng = rng.child(f"check:{check.stream_name}")
        xs = x
        if rows is not None:
            xs, crng = x[rows], crng.select(rows)
        if xs.shape[0] == 0:
            return CheckErrors(j, rows, torch.zeros(0, dtype=self.distance_dtype or _real_dtype(x), device=x.device))
        if check.mode == "lie":  # forward-mode AD along the path: its own forward, not a fused pass
            with self.untapped():
                parts = [lie_errors(self.model, check, j, part, self.locate, self.distance_dtype)
                         for part in row_pieces(xs, self.max_rows)]
            return CheckErrors(j, rows, parts[0] if len(parts) == 1 else torch.cat(parts))
        if check.group is not None:  # every element on every sample
            g_key = f"{where}.group"
            for e, element in enumerate(check.group.elements):
                xt = self.apply(element, xs, None, g_key)
                pending.append(TransformedInput(j, rows, xt, xt.shape[0], None, None, g_key, f"{where}.output",
                                                element=e))
            return None
        if check.worst_of is None:
            self.queue_draw(check, j, rows, xs, check.input, check.output, crng, None, pending)
        else:  # K draws: K items of the same fused call
            for d in draws(check, crng):
                self.queue_draw(check, j, rows, xs, d.t_in, d.t_out, d.rng, d.k, pending)
        return None

    def queue_draw(self, check: Any, j: int, rows: torch.Tensor | None, xs: torch.Tensor, t_in: Any, t_out: Any,
                   rng: SampleRNG, k: int | None, pending: list[TransformedInput]) -> None:
        """Draw the parameters of ``t_in`` / ``t_out`` from ``rng`` and queue ``t_in(xs)``."""
        where = f"checks[{j}]"
        in_key = f"{where}.both" if check.both else f"{where}.input"
        out_key = f"{where}.both" if check.both else f"{where}.output"
        p_in = self.sample(t_in, rng, in_key)
        p_out = p_in if check.both else self.sample(t_out, rng.child("output"), out_key)
        xt = self.apply(t_in, xs, p_in, in_key)
        item = TransformedInput(j, rows, xt, xt.shape[0], p_in, p_out, in_key, out_key, draw=k,
                                t_in=t_in if k is not None else None, t_out=t_out if k is not None else None)
        if check.mask == "valid":  # where the transform keeps content: it maps ones to ones there
            item.valid = self.apply(t_in, torch.ones_like(xs), p_in, in_key) >= 1.0 - 1e-6
        pending.append(item)

    def forward_fused(self, pending: list[TransformedInput]) -> None:
        """Run the model once on the concatenation of all pending inputs of the same shape or, with
        ``max_rows``, on runs of consecutive inputs that fit one call of ``max_rows`` rows (an input
        larger than that alone, in calls of ``max_rows`` rows: it is a large batch already)."""
        groups: dict[tuple[tuple[int, ...], torch.dtype], list[TransformedInput]] = {}
        for item in pending:
            assert item.inputs is not None
            groups.setdefault((tuple(item.inputs.shape[1:]), item.inputs.dtype), []).append(item)
        call = 1  # call 0 is the base forward
        for batch in (b for items in groups.values() for b in packed(items, self.max_rows)):
            offset = 0
            for it in batch:
                it.call, it.offset = call, offset
                offset += it.rows_in_call
            call += 1
            x = batch[0].inputs if len(batch) == 1 else torch.cat([it.inputs for it in batch])
            try:
                out = forward_rows(self.model, x, self.locate, batch[0].in_key, self.max_rows)
            except Exception as exc:
                if not is_oom(exc):  # find the check whose inputs the model rejects
                    for it in batch if len(batch) > 1 else []:
                        forward_once(self.model, it.inputs, self.locate, it.in_key)
                raise
            for it, part in zip(batch, torch.split(out, [it.rows_in_call for it in batch])):
                it.outputs, it.inputs = part, None  # release the inputs

    def refuse_batch_dependent_width(self, x: torch.Tensor, y: torch.Tensor, pending: list[TransformedInput]) -> None:
        """When a fused call's outputs do not fit: is it the model, whose output per sample
        changes with the batch size? Then that is the error, not the check's output transform."""
        rows: dict[int, int] = {}
        for item in pending:
            rows[item.call] = rows.get(item.call, 0) + item.rows_in_call
        n = x.shape[0]
        for size in sorted(set(rows.values()) - {n}):
            repeated = x.repeat(-(-size // n), *([1] * (x.dim() - 1)))[:size]
            try:
                other = forward_rows(self.model, repeated, self.locate, "input.shape", self.max_rows)
            except Exception:
                return  # no diagnosis: the check's own error stands
            if other.shape[1:] != y.shape[1:]:
                raise batch_dependent_width(self.locate, self.model, n, y, size, other)

    def output_side(self, item: TransformedInput, y: torch.Tensor) -> torch.Tensor:
        """``f_out`` of the shared base outputs of the item's rows."""
        check = self.checks[item.check_index]
        ys = y if item.rows is None else y[item.rows]
        if item.element is not None:
            element = check.group.elements[item.element]
            return self.apply(element, ys, None, item.out_key) if check.both else ys
        return self.apply(_output_transform(check, item), ys, item.p_out, item.out_key)

    def compared(self, item: TransformedInput, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The pair the distance compares: ``f_out(y)`` and ``model(f_in(x))``, masked, same shape."""
        b = item.outputs
        assert b is not None
        if item.valid is not None:
            a, b = self.masked(a, b, item)
        if a.shape != b.shape:
            raise self.locate.error(
                item.out_key,
                f"output transform gives shape {list(a.shape[1:])} but the model's output on transformed inputs "
                f"has shape {list(b.shape[1:])}",
                "the output transform must act on the model's outputs",
            )
        return a, b

    def masked(self, a: torch.Tensor, b: torch.Tensor, item: TransformedInput) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero both outputs outside the region valid on both sides (``mask: valid``): the pixels the
        input transform keeps in frame, and those the output transform keeps in frame."""
        check = self.checks[item.check_index]
        valid = item.valid
        assert valid is not None
        if a.dim() < 3 or a.shape[-2:] != valid.shape[-2:] or a.shape != b.shape:
            raise self.locate.error(
                f"checks[{item.check_index}].mask",
                f"'mask: valid' compares images of the input's size {list(valid.shape[-2:])}; "
                f"the outputs have shape {list(b.shape[1:])}", "use it for image-to-image models")
        keep = valid.reshape(valid.shape[0], -1, *valid.shape[-2:]).all(dim=1)  # (n, H, W): every channel kept
        t_out = _output_transform(check, item)
        if t_out.name != "identity":
            kept_out = self.apply(t_out, torch.ones_like(a), item.p_out, item.out_key) >= 1.0 - 1e-6
            if kept_out.shape[-2:] != keep.shape[-2:]:
                raise self.locate.error(f"checks[{item.check_index}].mask",
                                        f"the output transform maps images of size {list(keep.shape[-2:])} to "
                                        f"{list(kept_out.shape[-2:])}: no common region to compare")
            keep = keep & kept_out.reshape(kept_out.shape[0], -1, *kept_out.shape[-2:]).all(dim=1)
        m = keep.reshape(keep.shape[0], *([1] * (a.dim() - 3)), *keep.shape[-2:]).to(a.dtype)
        return a * m, b * m

    def distance(self, j: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return check_distance(self.checks, self.locate, j, a, b, self.distance_dtype)

    def distances(self, pending: list[TransformedInput],
                  pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        return batched_distances(self.checks, self.locate, [item.check_index for item in pending], pairs,
                                 self.distance_dtype)

    def apply(self, t: Any, x: torch.Tensor, params: Any, key: str) -> torch.Tensor:
        """``t.apply(x, params)``, checked: a tensor with one row per row of ``x``."""
        try:
            out = t.apply(x, params)
        except TransformError as exc:
            raise self.locate.error(key, exc.message, exc.hint) from None
        except Exception as exc:
            if is_oom(exc):
                raise
            raise self.locate.error(
                key, f"transform {t.describe()} failed on shape {list(x.shape)}: {first_line(exc)}") from None
        if not isinstance(out, torch.Tensor):
            raise self.locate.error(key, f"transform {t.describe()} returned {type(out).__name__}, expected a tensor")
        if out.dim() == 0 or out.shape[0] != x.shape[0]:
            raise self.locate.error(key, f"transform {t.describe()} returned shape {list(out.shape)} for a batch of "
                                    f"{x.shape[0]}", "a transform keeps one row per sample, the batch dimension first")
        return out

    def sample(self, t: Any, rng: SampleRNG, key: str) -> Any:
        try:
            return t.sample(rng)
        except TransformError as exc:
            raise self.locate.error(key, exc.message, exc.hint) from None
        except (ValueError, RuntimeError) as exc:
            if is_oom(exc):
                raise
            raise self.locate.error(key, f"drawing the parameters of {t.describe()} failed: "
                                    f"{first_line(exc)}") from None


def _output_transform(check: Any, item: TransformedInput) -> Any:
    return item.t_out if item.t_out is not None else check.output


def _real_dtype(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.is_floating_point() else torch.float32


def _assembled(checks: Sequence[Any], pending: list[TransformedInput], errors: list[torch.Tensor]) -> list[CheckErrors]:
    """One :class:`CheckErrors` per check of ``pending``; a group check's errors are the mean over
    its elements (summed in element order), a worst-of check's the maximum over its draws."""
    out: list[CheckErrors] = []
    elements: dict[int, list[torch.Tensor]] = {}
    drawn: dict[int, list[tuple[torch.Tensor, Any]]] = {}
    for item, e in zip(pending, errors):
        j = item.check_index
        if item.draw is not None:
            drawn.setdefault(j, []).append((e, item.p_in))
            if item.draw == checks[j].worst_of.k - 1:  # the last draw
                parts = drawn.pop(j)
                worst = combine(checks[j], [p[0] for p in parts], [p[1] for p in parts])
                out.append(CheckErrors(j, item.rows, worst.errors, worst=worst))
            continue
        if item.element is None:
            out.append(CheckErrors(j, item.rows, e))
            continue
        elements.setdefault(j, []).append(e)
        order = checks[j].group.order
        if item.element == order - 1:  # the last element: the mean over the group
            parts = elements.pop(j)
            total = parts[0]
            for part in parts[1:]:
                total = total + part
            out.append(CheckErrors(j, item.rows, total / order, tuple(parts)))
    return out


def _ordered(order: list[int], results: list[CheckErrors]) -> list[CheckErrors]:
    by_check = {r.check_index: r for r in results}
    return [by_check[j] for j in order]
