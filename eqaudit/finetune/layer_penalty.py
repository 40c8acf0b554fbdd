"""The layer-wise penalty (Implicitly Equivariant Networks): per chosen layer, the equivariance
error of its feature maps under each penalized check's input transform, hinged like the output
penalty, taken from the forward passes the penalty already runs (forward hooks; no extra forward).

The feature-map actions (quarter turns, flips, transposes, shifts with stride handling) and the
per-sample error (``relative_l2`` of ``f_in(h(x))`` and ``h(f_in(x))``) are the per-layer audit's
(:mod:`eqaudit.engine.layers`).

.. code-block:: yaml

    regularizer:
      layers:                         # or one entry {name: all, weight: 0.1}: every feature map
        - {name: features.0, weight: 0.1, epsilon: 0}
        - {name: features.2, weight: 0.1}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import EqauditError, did_you_mean
from ..io.yaml_source import YamlSource
from ..spec import Spec, check_keys, describe_value, expect_mapping, parse_float

LAYER_KEYS = ("name", "weight", "epsilon")


@dataclass(frozen=True)
class LayerTerm:
    """One layer of the layer-wise penalty: ``weight * max(0, error - epsilon)``."""

    name: str  # a module name of model.named_modules(), or "all"
    weight: float
    epsilon: float = 0.0


def parse_layer_terms(src: YamlSource, raw: Any, spec: Spec) -> tuple[LayerTerm, ...]:
    """``regularizer.layers``: a list of ``{name, weight, epsilon}`` (or one such mapping); a
    name of ``all`` stands alone. At least one penalized check must act on feature maps."""
    from ..engine.layers import acts_on_features

    if raw == "all":
        raise src.error("regularizer.layers", "'all' needs a weight",
                        "write layers: [{name: all, weight: 0.1}]")
    entries = [raw] if isinstance(raw, dict) else raw
    if not isinstance(entries, list) or not entries:
        raise src.error("regularizer.layers", f"expected a list of {{name, weight, epsilon}}, got {describe_value(raw)}",
                        "e.g. layers: [{name: features.0, weight: 0.1}]")
    terms = []
    for i, entry in enumerate(entries):
        key = f"regularizer.layers[{i}]" if isinstance(raw, list) else "regularizer.layers"
        section = expect_mapping(src, entry, key)
        check_keys(src, section, LAYER_KEYS, key)
        name = section.get("name")
        if not isinstance(name, str) or not name:
            raise src.error(f"{key}.name", f"expected a module name, got {describe_value(name)}",
                            "a name of model.named_modules(), e.g. features.0, or all")
        if "weight" not in section:
            raise src.error(f"{key}.weight", "missing: the layer's weight (beta)", "e.g. weight: 0.1")
        weight = parse_float(src, section["weight"], f"{key}.weight")
        epsilon = parse_float(src, section.get("epsilon", 0.0), f"{key}.epsilon")
        terms.append(LayerTerm(name, weight, epsilon))
    if any(t.name == "all" for t in terms) and len(terms) > 1:
        raise src.error("regularizer.layers", "'all' stands alone: it names every feature-map layer")
    if len({t.name for t in terms}) != len(terms):
        raise src.error("regularizer.layers", "a layer is named twice")
    if not any(c.weight > 0 and _eligible(c, acts_on_features) for c in spec.checks):
        raise src.error("regularizer.layers", "no penalized check's input transform acts on feature maps",
                        "penalize (weight > 0) a sample check of rot90, hflip, vflip, transpose or shift")
    return tuple(terms)


def _eligible(check: Any, acts_on_features: Any) -> bool:
    return check.group is None and check.mode == "sample" and acts_on_features(check.input)


def layer_names(terms: Sequence[LayerTerm]) -> tuple[str, ...] | str:
    """The ``layers`` of the spec whose audit reports these layers' errors."""
    return "all" if terms and terms[0].name == "all" else tuple(t.name for t in terms)


class LayerPenalty:
    """The hooks on the chosen layers and the layer terms of one penalty step."""

    def __init__(self, cfg: Any, model: Any, terms: Sequence[LayerTerm]) -> None:
        from ..engine.layers import LayerTap, acts_on_features, is_feature_map, resolve_layers

        self.cfg, self.terms = cfg, list(terms)
        spec = cfg.spec.replace(layers=layer_names(terms))
        try:
            layers = resolve_layers(model, spec)
        except EqauditError as exc:
            index = exc.key.split("[")[-1].rstrip("]") if exc.key and "[" in exc.key else "0"
            names = [n for n, _ in model.named_modules() if n] if hasattr(model, "named_modules") else []
            raise cfg.error(f"regularizer.layers[{index}].name", exc.message,
                            did_you_mean(self.terms[int(index)].name, names) if names else exc.hint) from None
        self.all = layer_names(terms) == "all"
        self.eligible = {j for j, c in enumerate(cfg.spec.checks) if _eligible(c, acts_on_features)}
        self.tap = LayerTap(layers)
        self.tap.recording = False
        self._is_map = is_feature_map

    def weight_of(self, name: str) -> LayerTerm:
        return self.terms[0] if self.all else next(t for t in self.terms if t.name == name)

    def start(self) -> None:
        """Record the forward passes from now on (the step's base pass first)."""
        self.tap.clear()
        self.tap.recording = True

    def stop(self) -> None:
        self.tap.recording = False
        self.tap.clear()

    def terms_of(self, evaluation: Any, base_passes: Sequence[int], input_hw: tuple[int, ...],
                 like: Any) -> tuple[Any, dict[str, Any]]:
        """The layer penalty of one step (in the dtype and on the device of the tensor ``like``) and
        each layer's mean error (detached), from the passes recorded since :meth:`start`:
        ``base_passes`` are the indices of the base forwards (their outputs concatenated are the
        penalty points' features), then the checks' passes in order."""
        import torch

        from ..engine.layers import layer_errors

        outputs = self.tap.outputs
        after = max(base_passes) + 1
        for name in self.tap.names:
            recorded = outputs[name]
            bases = [recorded[i] for i in base_passes]
            base = bases[0] if len(bases) == 1 or any(b is None for b in bases) else torch.cat(bases)
            outputs[name] = [base] + recorded[after:]
        total = torch.zeros((), dtype=like.dtype, device=like.device)  # not a host zero copied over every step
        per_layer: dict[str, list[Any]] = {}
        offset = 0  # the checks' passes so far (sequential evaluation: each numbers its own from 1)
        current, used = None, 0
        for item in evaluation.transformed:
            if item.check_index != current:
                offset, current, used = offset + used, item.check_index, 0
            used = max(used, item.call)
            if item.check_index not in self.eligible or item.element is not None or item.rows is not None:
                continue
            check = self.cfg.spec.checks[item.check_index]
            found = layer_errors(self.tap, check, item.p_in, offset + item.call, item.offset, item.rows_in_call,
                                 input_hw)
            for name, errors in found.items():
                if isinstance(errors, str):
                    continue
                if isinstance(errors, tuple):  # a shift on a strided map: the samples it divides
                    errors, keep = errors
                    if not bool(keep.any()):
                        continue
                    errors = errors[keep]
                if self.all and not self._is_map(outputs[name][0]):
                    continue
                term = self.weight_of(name)
                error = errors.mean()
                per_layer.setdefault(name, []).append(error.detach())
                total = total.to(error.device) + term.weight * torch.clamp_min(error - term.epsilon, 0.0)
        self.tap.recording = False
        self.tap.clear()
        return total, {name: torch.stack(v).mean() for name, v in per_layer.items()}
