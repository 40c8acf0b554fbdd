"""Per-layer attribution: how equivariant each intermediate feature map is.

Forward hooks record the outputs of the named modules on every forward pass of a chunk (the base
points, then the fused transformed points). For a check whose input transform also acts on
feature maps (quarter turns, flips, transposes, and shifts on maps of the input's size, or on
maps downsampled by an integer stride when the shift is a multiple of it), the
layer's error is ``relative_l2(f_in(feature(x)), feature(f_in(x)))`` per sample, folded into its
own statistics column, so the user sees the first layer where the symmetry breaks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from transforms_zoo import Compose

from .channels import ChannelTable
from .distances import relative_l2
from .distributed import World
from .estimator import BlockStats
from ..errors import did_you_mean
from ..spec import Spec

#: Transforms whose action on a feature map of any size is the same as on the input.
ANY_SIZE = frozenset({"identity", "rot90", "hflip", "vflip", "transpose"})
#: Transforms that act the same only on maps of the input's spatial size.
SAME_SIZE = frozenset({"shift"})
#: The reason of a strided row whose only samples the stride divides did not move (shift (0, 0)).
ONLY_IDENTITY = "only identity draws act here"


def _parts(t: Any) -> list[Any]:
    return list(t.parts) if isinstance(t, Compose) else [t]


def acts_on_features(t: Any) -> bool:
    """Whether the transform can be applied to intermediate feature maps."""
    return all(p.name in ANY_SIZE or p.name in SAME_SIZE for p in _parts(t))


def _needs_same_size(t: Any) -> bool:
    return any(p.name in SAME_SIZE for p in _parts(t))


def resolve_layers(model: Any, spec: Spec) -> list[tuple[str, torch.nn.Module]]:
    """The modules named by ``spec.layers`` (``all``: every leaf module), or an exit-2 error."""
    if spec.layers is None:
        return []
    if not isinstance(model, torch.nn.Module):
        raise spec.error("layers", "per-layer attribution needs a torch.nn.Module")
    modules = dict(model.named_modules())
    if spec.layers == "all":
        return [(n, m) for n, m in modules.items() if n and not any(True for _ in m.children())]
    out = []
    mapping_form = spec.per_channel or any(k.startswith("layers.names") for k in spec.lines)
    key = "layers.names" if mapping_form else "layers"  # the {names, per_channel} form
    for i, name in enumerate(spec.layers):
        if name not in modules or not name:
            raise spec.error(f"{key}[{i}]", f"the model has no module '{name}'",
                             did_you_mean(name, [n for n in modules if n]) or "see model.named_modules()")
        out.append((name, modules[name]))
    return out


class LayerTap:
    """Records the outputs of the chosen modules, one list entry per forward pass."""

    def __init__(self, layers: list[tuple[str, torch.nn.Module]]) -> None:
        self.names = [n for n, _ in layers]
        self.outputs: dict[str, list[Any]] = {n: [] for n in self.names}
        self.recording = True
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in layers]

    def _hook(self, name: str) -> Any:
        def record(_module: Any, _inputs: Any, output: Any) -> None:
            if self.recording:
                self.outputs[name].append(output if isinstance(output, torch.Tensor) else None)

        return record

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Forward passes inside do not count as passes (a Lie check's own forward)."""
        self.recording = False
        try:
            yield
        finally:
            self.recording = True

    def clear(self) -> None:
        for v in self.outputs.values():
            v.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def layer_errors(
    tap: LayerTap, check: Any, p_in: Any, call: int, offset: int, n: int, input_hw: tuple[int, ...],
    maps: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """Per-sample errors of each recorded layer for one check, or the reason it was skipped.

    ``call`` is the index of the forward pass that carried this check's transformed points and
    ``offset``/``n`` its rows there; pass 0 is the base forward. On a map downsampled by an
    integer stride, a shift acts when it is a multiple of the stride: the entry is then
    ``(errors, keep)`` with ``keep`` the samples where it is. ``maps``, when given, receives each
    measured layer's aligned maps ``(transform(feature(x)), feature(transform(x)))``.
    """
    out: dict[str, torch.Tensor | str] = {}
    for name in tap.names:
        recorded = tap.outputs[name]
        if len(recorded) <= call or recorded[0] is None or recorded[call] is None:
            out[name] = "not a tensor output, or not reached"
            continue
        base, moved = recorded[0], recorded[call][offset : offset + n]
        if base.dim() < 3:
            out[name] = f"output of shape {list(base.shape[1:])} is not a feature map"
            continue
        if base.shape[0] != n:
            base = base[:n]
        params, keep = p_in, None
        if _needs_same_size(check.input) and tuple(base.shape[-2:]) != tuple(input_hw):
            scaled = _strided_params(check.input, p_in, n, tuple(input_hw), tuple(base.shape[-2:]), base.device)
            if isinstance(scaled, str):
                out[name] = scaled
                continue
            params, keep = scaled
        expected = check.input.apply(base, params)
        if expected.shape != moved.shape:
            out[name] = f"the transform gives shape {list(expected.shape[1:])}, the layer {list(moved.shape[1:])}"
            continue
        e = relative_l2(expected.to(torch.float64), moved.to(torch.float64))
        if maps is not None:
            maps[name] = (expected, moved)
        out[name] = e if keep is None else (e, keep)
    return out


def map_stride(input_hw: tuple[int, ...], map_hw: tuple[int, ...]) -> tuple[int, int] | None:
    """The (rows, columns) stride of a feature map of size ``map_hw`` under an input of size
    ``input_hw``, when both divide evenly (None otherwise)."""
    (h, w), (mh, mw) = tuple(input_hw)[-2:], tuple(map_hw)[-2:]
    if mh < 1 or mw < 1 or h % mh or w % mw:
        return None
    return h // mh, w // mw


def _strided_params(t: Any, p: Any, n: int, input_hw: tuple[int, ...], map_hw: tuple[int, ...],
                    device: torch.device) -> tuple[Any, torch.Tensor] | str:
    """The transform's parameters on a map downsampled by an integer stride: each shift divided by
    the stride, with the samples whose shift is a multiple of it (the others are left out), or the
    reason the transform does not act on the map."""
    from transforms_zoo.image import ShiftParams

    stride = map_stride(input_hw, map_hw)
    if stride is None:
        return (f"map of size {list(map_hw)} does not divide the input's {list(input_hw)}: "
                "a pixel shift does not act on it")
    sy, sx = stride
    parts = _parts(t)
    if sy != sx and len(parts) > 1:
        return f"map stride {sy}x{sx} is not square: a shift composed with other transforms does not act on it"
    given = (p if p is not None else (None,) * len(parts)) if isinstance(t, Compose) else (p,)
    keep = torch.ones(n, dtype=torch.bool, device=device)
    scaled = []
    for part, q in zip(parts, given):
        if part.name not in SAME_SIZE:
            scaled.append(q)
            continue
        if q is None:
            dx = torch.full((n,), part.dx[0], dtype=torch.int64, device=device)
            dy = torch.full((n,), part.dy[0], dtype=torch.int64, device=device)
        else:
            dx, dy = q.dx.to(device), q.dy.to(device)
        keep &= (torch.remainder(dx, sx) == 0) & (torch.remainder(dy, sy) == 0)
        scaled.append(ShiftParams(torch.div(dx, sx, rounding_mode="floor"), torch.div(dy, sy, rounding_mode="floor")))
    return (tuple(scaled) if isinstance(t, Compose) else scaled[0]), keep


def identity_draws(t: Any, p: Any, n: int, device: torch.device) -> torch.Tensor:
    """The samples whose draw of a shift-only transform moves nothing (every shift is (0, 0)):
    no evidence about a strided map, where the stride keeps them more often than the others."""
    parts = _parts(t)
    if any(part.name not in SAME_SIZE for part in parts):
        return torch.zeros(n, dtype=torch.bool, device=device)
    given = (p if p is not None else (None,) * len(parts)) if isinstance(t, Compose) else (p,)
    still = torch.ones(n, dtype=torch.bool, device=device)
    for part, q in zip(parts, given):
        if q is None:
            still &= torch.tensor(part.dx[0] == 0 and part.dy[0] == 0, device=device)
        else:
            still &= (q.dx.to(device) == 0) & (q.dy.to(device) == 0)
    return still


def is_feature_map(output: Any) -> bool:
    """A 4-D tensor (N, C, H, W): what ``layers: all`` reports."""
    return isinstance(output, torch.Tensor) and output.dim() == 4


class LayerPlan:
    """Which checks get per-layer errors, in which statistics columns, and the hooks recording them."""

    def __init__(self, spec: Spec, layers: list[tuple[str, Any]], checks: list[int], first: int) -> None:
        self.spec, self.names, self.checks = spec, [n for n, _ in layers], checks
        self.first = first
        self.tap = LayerTap(layers)
        self.skipped: dict[tuple[int, str], str] = {}
        self.strided: dict[tuple[int, str], tuple[int, int]] = {}  # shifts divided by a map's stride
        self.maps: set[str] = set()  # layers seen with a 4-D (N, C, H, W) output
        #: identity draws a stride kept, per (check, layer): counted, never folded as evidence
        self.identity: dict[tuple[int, str], torch.Tensor] = {}
        self.channels = ChannelTable() if spec.per_channel else None

    @classmethod
    def build(cls, model: Any, spec: Spec, first_column: int) -> LayerPlan | None:
        """The plan of ``spec.layers`` on ``model`` (None without layers), its statistics columns
        from ``first_column`` on."""
        layers = resolve_layers(model, spec)
        if not layers:
            return None
        checks = [j for j, c in enumerate(spec.checks)
                  if c.group is None and c.mode == "sample" and acts_on_features(c.input) and spec.num_funcs is None
                  and c.worst_of is None]  # worst_of: K draws would fold into one layer column
        return cls(spec, layers, checks, first_column)

    @property
    def n_columns(self) -> int:
        return len(self.checks) * len(self.names)

    def column(self, j: int, layer: int) -> int:
        return self.first + self.checks.index(j) * len(self.names) + layer

    def fold(self, transformed: list[Any], stats: BlockStats, start: int, valid: torch.Tensor,
             hw: tuple[int, ...]) -> None:
        """Fold the layer errors of the chunk's forward passes (recorded by the taps) into the
        statistics: ``transformed`` says which call and offset carried each check's rows."""
        for name in self.names:
            recorded = self.tap.outputs[name]
            if recorded and is_feature_map(recorded[0]):
                self.maps.add(name)
        for item in transformed:
            j = item.check_index
            if j not in self.checks or item.rows is not None or item.element is not None:
                continue
            check = self.spec.checks[j]
            maps: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = {} if self.channels is not None else None
            errors = layer_errors(self.tap, check, item.p_in, item.call, item.offset, item.rows_in_call, hw, maps)
            for li, name in enumerate(self.names):
                e = errors[name]
                if isinstance(e, str):
                    self.skipped[(j, name)] = e
                    continue
                keep = valid
                if isinstance(e, tuple):  # a shift on a strided map: only samples it divides
                    e, kept = e
                    keep = self._strided_keep(j, name, valid & kept, check, item.p_in, hw)
                stats.update(self.column(j, li), start, e, keep)
                if maps is not None and name in maps:
                    self.channels.fold(j, name, maps[name], keep, start)  # type: ignore[union-attr]

    def _strided_keep(self, j: int, name: str, kept: torch.Tensor, check: Any, p_in: Any,
                      hw: tuple[int, ...]) -> torch.Tensor:
        """The samples of a strided map that are evidence: the stride divides their shift and it is
        not (0, 0) (those are counted, for the reason of an empty row)."""
        stride = map_stride(hw, tuple(self.tap.outputs[name][0].shape[-2:])) or (1, 1)
        self.strided[(j, name)] = stride
        self.skipped.setdefault((j, name), f"no sample's shift is a multiple of the map's "
                                f"stride {stride[0]}x{stride[1]}")
        still = kept & identity_draws(check.input, p_in, kept.shape[0], kept.device)
        count = still.sum()
        old = self.identity.get((j, name))
        self.identity[(j, name)] = count if old is None else old + count
        return kept & ~still

    def reduce(self, world: World) -> None:
        """Merge what the processes saw of the layers, on every process (a collective: each calls
        it once, after its chunks, whether it got any): the layers with feature maps, the skip
        reasons (the lowest rank's first), the strides, the identity draws, the per-channel sums."""
        if world.size > 1:
            import torch.distributed as dist

            mine = (self.maps, self.skipped, self.strided, {k: int(v) for k, v in self.identity.items()})
            gathered: list[Any] = [None] * world.size
            dist.all_gather_object(gathered, mine)
            identity: dict[tuple[int, str], int] = {}
            for maps, skipped, strided, counts in gathered:
                self.maps |= maps
                for key, reason in skipped.items():
                    self.skipped.setdefault(key, reason)
                self.strided.update(strided)
                for key, count in counts.items():
                    identity[key] = identity.get(key, 0) + count
            self.identity = {key: torch.tensor(count) for key, count in identity.items()}
        if self.channels is not None:
            self.channels.reduce(world)

    def results(self, j: int, summaries: list[Any]) -> list[dict[str, Any]] | None:
        """Check ``j``'s per-layer rows of the report (None: the check has none)."""
        if j not in self.checks:
            return None
        out = []
        for li, name in enumerate(self.names):
            if self.spec.layers == "all" and name not in self.maps:
                continue  # "all": the leaf modules whose outputs are (N, C, H, W) feature maps
            s = summaries[self.column(j, li)]
            if s.n == 0:
                identity = self.identity.get((j, name))
                reason = ONLY_IDENTITY if identity is not None and int(identity) > 0 else None
                out.append({"name": name, "skipped": reason or self.skipped.get((j, name), "no samples")})
            else:
                row = {"name": name, "n": s.n, "mean": s.mean, "std": s.std, "ci_low": s.ci_low,
                       "ci_high": s.ci_high, "max": s.max}
                if (j, name) in self.strided:  # n counts the samples whose shift the stride divides
                    row["stride"] = list(self.strided[(j, name)])
                if self.channels is not None:
                    row["channels"] = self.channels.row(j, name)
                out.append(row)
        return out

    def notes(self) -> list[str]:
        """The report's note naming the checks without per-layer errors."""
        skipped = [c.name for j, c in enumerate(self.spec.checks) if j not in self.checks]
        if not skipped:
            return []
        return ["per-layer errors skip checks whose transform does not act on feature maps (or with "
                "num_funcs, group:, mode: lie or worst_of): " + ", ".join(skipped)]
