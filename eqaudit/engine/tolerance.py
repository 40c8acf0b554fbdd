"""Thresholds that follow the dtype: a check that sets neither ``threshold`` nor ``epsilon`` is
gated at ``atol + rtol * scale`` instead of 0, so an exactly equivariant float32 model does not
fail on rounding noise.

``scale`` is the mean size of the model's outputs in the check's own distance (``dist(0, f(x))``
over up to :data:`SCALE_SAMPLES` of the audit's points) for the norm distances ``l1``, ``l2``,
``linf`` and ``lp:P``, and 1 for the others (already relative). ``atol`` and ``rtol`` default to
:data:`TOLERANCES` for the output dtype. The audit and :func:`eqaudit.testing.assert_equivariant`
share this rule. The module imports torch only when a threshold is derived (the pytest plugin
reads the tolerances without it).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

__all__ = ["SCALE_SAMPLES", "TOLERANCES", "default_tolerance", "derive_thresholds", "thresholds_from_outputs"]

#: Default ``rtol`` (and ``atol``) by output dtype name, for checks without their own threshold.
TOLERANCES: dict[str, float] = {
    "float64": 1e-10,
    "float32": 1e-5,
    "float16": 1e-2,
    "bfloat16": 5e-2,
}
#: Distances whose value scales with the size of the outputs: tolerances are relative to it.
NORM_DISTANCES = ("l1", "l2", "linf")
#: Points used to measure the output scale.
SCALE_SAMPLES = 128


def default_tolerance(dtype: Any) -> float:
    """The default ``rtol`` (= ``atol``) for outputs of ``dtype`` (a torch dtype or its name)."""
    name = str(dtype).replace("torch.", "")
    if name in TOLERANCES:
        return TOLERANCES[name]
    if "complex128" in name:
        return TOLERANCES["float64"]
    return TOLERANCES["float32"]


def _scale(distance: Any, y: Any) -> float:
    """The mean size of the outputs ``y`` in ``distance`` (1 for a distance that is relative)."""
    import torch

    from .compare import widened

    name = distance.name
    if not (name in NORM_DISTANCES or name.startswith("lp:")):
        return 1.0
    yy = widened(y, torch.float64)  # complex outputs: complex128, never cut to the real part
    sizes = distance(torch.zeros_like(yy), yy).reshape(-1).to(torch.float64)
    sizes = sizes[torch.isfinite(sizes)]
    return float(sizes.mean()) if sizes.numel() else 0.0


def derive_thresholds(forward: Any, spec: Any, sampler: Any, dev: Any, checks: list[int], *,
                      atol: float | None = None, rtol: float | None = None) -> tuple[Any, dict[int, str]]:
    """``spec`` with ``atol + rtol * scale`` as the threshold of each check in ``checks`` (their
    ``threshold_source`` set to ``dtype``), and per check the sentence that says how. The outputs
    come from one forward pass of the first points; a model that fails there is left to the audit
    to report (the thresholds stay as they were)."""
    from transforms_zoo import SampleRNG

    if not checks:
        return spec, {}
    n = min(spec.samples, SCALE_SAMPLES)
    x = sampler.draw(SampleRNG.for_range(spec.seed, 0, n, dev))
    try:
        y = forward(x)
    except Exception:
        return spec, {}
    return thresholds_from_outputs(spec, y, checks, atol=atol, rtol=rtol)


def thresholds_from_outputs(spec: Any, y: Any, checks: list[int], *, atol: float | None = None,
                            rtol: float | None = None) -> tuple[Any, dict[int, str]]:
    """:func:`derive_thresholds` from outputs ``y`` the caller already has (the model at the first
    :data:`SCALE_SAMPLES` points); outputs that are not a batched tensor leave ``spec`` as it is."""
    import torch

    if not checks or not isinstance(y, torch.Tensor) or y.dim() == 0:
        return spec, {}
    out_dtype = y.dtype if y.is_floating_point() or y.is_complex() else torch.get_default_dtype()
    base = default_tolerance(out_dtype)
    a = float(atol) if atol is not None else base
    r = float(rtol) if rtol is not None else base
    derived, notes = list(spec.checks), {}
    for j in checks:
        check = derived[j]
        scale = _scale(check.distance, y)
        threshold = a + r * scale
        if not math.isfinite(threshold):
            threshold = a
        derived[j] = dataclasses.replace(check, threshold=threshold, threshold_source="dtype")
        notes[j] = (f"threshold {threshold:.3g} = atol {a:.3g} + rtol {r:.3g} x output scale {scale:.4g} "
                    f"({str(out_dtype).replace('torch.', '')} outputs, {check.distance.name} distance)")
    return spec.replace(checks=tuple(derived)), notes
