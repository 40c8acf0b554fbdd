"""The validated spec as data: :class:`Spec` and its parts (model, input, checks), plus what a
spec builds and reads (the model, the files an audit reads)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transforms_zoo import Transform
from transforms_zoo._resolve import reference_file

from ..engine.distances import Distance
from ..errors import EqauditError
from ..io.yaml_source import YamlSource


@dataclass(frozen=True)
class ModelSpec:
    """How to build the model: a factory (``module:callable``) and/or a checkpoint file."""

    factory: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None


@dataclass(frozen=True)
class DataRef:
    """Points drawn from the samples stored at ``path``: a tensor under ``key`` (safetensors,
    ``.npz``, ``.pt``), the one array of a ``.npy`` or ``.pt`` file (``key`` None), or a folder of
    images (``key`` None)."""

    path: Path
    key: str | None


@dataclass(frozen=True)
class InputSpec:
    """The input domain: a uniform box over ``shape``, or rows of a data tensor (``data``, or the
    inputs of the Dataset that the ``dataset`` callable returns)."""

    shape: tuple[int, ...]
    bounds: Any = (0.0, 1.0)  # [lo, hi] or nested lists broadcast to shape + (2,)
    data: DataRef | None = None
    dtype: str | None = None  # None: the model's parameter dtype
    sampling: str = "random"  # data: "random" (with replacement) or "sequential"; box: "random" or "sobol"
    dataset: str | None = None  # "module:callable" returning a torch Dataset (instead of data)
    resize: bool = False  # an image folder: resize images of another size to shape (else refused)

    @property
    def from_data(self) -> bool:
        """Whether the points are rows of stored samples (``data`` or ``dataset``), not a box."""
        return self.data is not None or self.dataset is not None


@dataclass(frozen=True)
class CheckSpec:
    """One equivariance check: ``dist(output(f(x)), f(input(x)))``."""

    name: str
    input: Transform
    output: Transform
    both: bool
    distance: Distance
    epsilon: float = 0.0
    threshold: float = 0.0
    weight: float = 1.0
    #: Where ``threshold`` comes from: ``spec`` (its own), ``epsilon`` (defaults to it), ``default``
    #: (neither given: the audit derives it from the output dtype) or ``dtype`` (so derived).
    threshold_source: str = "spec"
    #: ``group:`` checks: the finite group whose every element is evaluated (a GroupTransform).
    group: Any = None
    #: ``sample`` (the error of drawn transforms) or ``lie`` (the Lie derivative along a path).
    mode: str = "sample"
    #: ``valid``: compare only the pixels that both transforms keep inside the frame.
    mask: str = "none"
    #: The name whose random stream draws the check's parameters (None: ``name``). Sweeps keep the
    #: swept check's stream, so every value sees the same draws of the other parameters.
    stream: str | None = None
    #: ``worst_of:``: per sample, the largest error over K draws or a grid (a WorstOf; None: one draw).
    worst_of: Any = None

    @property
    def stream_name(self) -> str:
        return self.stream if self.stream is not None else self.name

    @property
    def input_text(self) -> str:
        return self.input.describe()

    @property
    def output_text(self) -> str:
        return self.output.describe()


def _data_files(path: Path) -> dict[str, Path]:
    """The data file, or each image of a data folder, by key (``input.data``, ``input.data[i]``)."""
    if not path.is_dir():
        return {"input.data": path}
    from ..io.images import image_files

    return {f"input.data[{i}]": p for i, p in enumerate(image_files(path))}


@dataclass(frozen=True)
class Spec:
    """A validated audit spec."""

    model: ModelSpec
    input: InputSpec
    checks: tuple[CheckSpec, ...]
    distance: str = "l2"
    samples: int = 1024
    num_funcs: int | None = None  # None: every check on every sample
    seed: int = 0
    #: Per-layer attribution: module names, "all" (every leaf module), or None.
    layers: tuple[str, ...] | str | None = None
    #: ``layers: {per_channel: true}``: each layer's errors per channel too.
    per_channel: bool = False
    file: str | None = None
    base_dir: Path = field(default_factory=Path.cwd)
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)
    #: User code named by the spec: key (``checks[0].input``, ``distance``) -> ``module:attr`` text.
    code_refs: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def input_files(self) -> dict[str, Path]:
        """Every file an audit of this spec reads, by the key that names it, as resolved paths.

        Keys: ``spec`` (the spec file, when there is one), ``model.checkpoint``, ``input.data`` (a
        folder of images: each image, ``input.data[i]``; an output may be written beside them),
        ``model.factory``, ``input.dataset`` and the user-code references (``distance``, ``checks[i].distance``,
        ``checks[i].input`` / ``.output`` / ``.both``, ``checks[i].input[j]`` inside a list) whose
        code is a file (``file.py:attr``, or ``module:attr`` found beside the spec or on
        ``sys.path``). Outputs compare against these so that no output overwrites an input.
        """
        files: dict[str, Path] = {}
        if self.file and Path(self.file).is_file():
            files["spec"] = Path(self.file)
        if self.model.checkpoint is not None:
            files["model.checkpoint"] = self.model.checkpoint
        if self.input.data is not None:
            files.update(_data_files(self.input.data.path))
        refs = dict(self.code_refs)
        if isinstance(self.model.factory, str):
            refs["model.factory"] = self.model.factory
        if self.input.dataset is not None:
            refs["input.dataset"] = self.input.dataset
        for key, ref in refs.items():
            path = reference_file(ref, self.base_dir)
            if path is not None:
                files[key] = path
        return {key: path.resolve() for key, path in files.items()}

    def _source(self) -> YamlSource:
        """The spec's file and key lines, to locate errors."""
        return YamlSource(None, self.file or "<spec>", dict(self.lines))

    def error(self, key: str | None, message: str, hint: str | None = None) -> EqauditError:
        """An :class:`EqauditError` located at ``key`` of this spec's file."""
        return self._source().error(key, message, hint)

    def build_model(self, checkpoint: str | Path | None = None, *, trust_checkpoint: bool = False) -> Any:
        """The model of the ``model`` block (``checkpoint`` overrides ``model.checkpoint``). Errors
        at its ``model.*`` keys carry their line in the spec (not a given checkpoint's errors).

        The factory runs under ``torch.manual_seed(self.seed)`` in a forked RNG, so a model built
        without a checkpoint starts from the same weights on every run and entry point (measure,
        sweep, ``audit()``, ``assert_equivariant``, finetune), and the caller's RNG is untouched."""
        import torch

        from ..io.checkpoint import load_model

        cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        try:
            with torch.random.fork_rng(devices=cuda):
                torch.manual_seed(self.seed)
                return load_model(
                    Path(checkpoint) if checkpoint is not None else self.model.checkpoint,
                    factory=self.model.factory,
                    kwargs=dict(self.model.kwargs),
                    base_dir=self.base_dir,
                    trust_checkpoint=trust_checkpoint,
                    source=self.file,
                )
        except EqauditError as exc:
            from_spec = exc.file == self.file and (checkpoint is None or exc.key != "model.checkpoint")
            if from_spec and exc.key:
                exc.located(line=self._source().line_of(exc.key))
            raise

    def check_index(self, name: str) -> int:
        return next(i for i, c in enumerate(self.checks) if c.name == name)

    def replace(self, **changes: Any) -> Spec:
        """A copy with some fields changed (command-line overrides)."""
        return dataclasses.replace(self, **changes)
