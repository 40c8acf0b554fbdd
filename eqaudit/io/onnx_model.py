"""Load an ONNX graph (``model.checkpoint: model.onnx``) as a torch module that runs it with
onnxruntime on CPU: the artifact a team ships is audited, not the PyTorch model it came from.

The module takes a torch batch and returns a torch tensor (the graph's first output) on the batch's
device. A graph whose batch dimension is fixed to B is fed in pieces of B (the last piece padded
with copies of its last sample, the padding's outputs dropped). It has no parameters and no
autograd: measure, sweep and validate only (no ``mode: lie``, no fine-tune)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import EqauditError

#: The extra that installs onnxruntime (and onnx).
INSTALL_HINT = "install the optional dependency: pip install 'eqaudit[onnx]' (or pip install onnxruntime)"

#: ONNX element types -> (numpy dtype, torch dtype) of the inputs we can feed.
_INPUT_TYPES = {
    "tensor(float)": (np.float32, torch.float32),
    "tensor(double)": (np.float64, torch.float64),
    "tensor(float16)": (np.float16, torch.float16),
}

Error = Callable[..., EqauditError]  # ckpt_error(message, hint=None)


def is_onnx_path(path: str | Path) -> bool:
    """Whether a checkpoint path names an ONNX graph (by its ``.onnx`` suffix)."""
    return Path(path).suffix.lower() == ".onnx"


class OnnxModule(nn.Module):
    """An onnxruntime session as a module: ``forward(x)`` runs the graph on CPU."""

    def __init__(self, session: Any, name: str) -> None:
        super().__init__()
        self.session = session
        self.name = name
        (inp,) = session.get_inputs()
        self.input_name = inp.name
        self.output_name = session.get_outputs()[0].name
        self.np_dtype, torch_dtype = _INPUT_TYPES[inp.type]
        batch = inp.shape[0] if inp.shape else None
        #: the graph's fixed batch size, or None when the batch dimension is dynamic
        self.fixed_batch: int | None = batch if isinstance(batch, int) and batch > 0 else None
        # an empty buffer of the input dtype: model_dtype() and model_device() read the graph's own
        self.register_buffer("_input_dtype", torch.zeros(0, dtype=torch_dtype), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 - see class docstring
        try:
            array = x.detach().to("cpu", self._input_dtype.dtype).numpy()
        except RuntimeError as exc:  # a functorch-wrapped tensor (torch.func.jvp: mode lie)
            raise EqauditError(f"ONNX model '{self.name}' runs outside autograd, so it has no derivatives "
                               f"({str(exc).splitlines()[0]})", key="model.checkpoint",
                               hint="use mode: sample for this check, or audit the PyTorch model") from None
        pieces = [array] if self.fixed_batch is None else _pieces(array, self.fixed_batch)
        outputs = [self._run(piece) for piece in pieces]
        out = np.concatenate(outputs)[: len(array)] if len(outputs) > 1 else outputs[0][: len(array)]
        return torch.from_numpy(np.ascontiguousarray(out)).to(x.device, torch.float32)

    def _run(self, array: np.ndarray) -> np.ndarray:
        try:
            return np.asarray(self.session.run([self.output_name], {self.input_name: array})[0])
        except Exception as exc:  # onnxruntime's own errors (bad shape, kernel failure)
            raise EqauditError(f"onnxruntime failed on a batch of shape {list(array.shape)}: "
                               f"{' '.join(str(exc).split())[:300]}", key="model.checkpoint",
                               hint=f"check input.shape against the graph's input of '{self.name}'") from None


def _pieces(array: np.ndarray, size: int) -> list[np.ndarray]:
    """``array`` cut into pieces of ``size`` along the batch, the last padded with its last sample."""
    out = [array[i : i + size] for i in range(0, len(array), size)]
    short = size - len(out[-1])
    if short:
        out[-1] = np.concatenate([out[-1], np.repeat(out[-1][-1:], short, axis=0)])
    return out


def load_onnx(path: Path, error: Error) -> OnnxModule:
    """The ONNX graph at ``path`` as an :class:`OnnxModule`; every problem is ``error(message, hint)``."""
    try:
        import onnxruntime
    except ImportError:
        raise error("is an ONNX graph, which needs onnxruntime", INSTALL_HINT) from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: no warnings on stderr
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # InvalidProtobuf, Fail, NoSuchFile: onnxruntime's own exception types
        raise error(f"is not a valid ONNX graph: {' '.join(str(exc).split())[:300]}",
                    "re-export it with torch.onnx.export(model, example, path, dynamic_axes=...)") from None
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise error(f"the ONNX graph takes {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                    "eqaudit feeds one tensor", "export a graph with a single input")
    if inputs[0].type not in _INPUT_TYPES:
        raise error(f"the ONNX graph's input '{inputs[0].name}' is a {inputs[0].type}; eqaudit feeds "
                    "float16, float32 or float64", "export the model with a floating-point input")
    if not inputs[0].shape:
        raise error("the ONNX graph's input has no batch dimension", "export it with a batch dimension first")
    return OnnxModule(session, path.name)
