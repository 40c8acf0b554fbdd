"""Regularized fine-tuning: the task loss plus the equivariance penalty of a spec's checks.

The config (a spec plus training keys) is documented in :mod:`.config`; the modules:
``config`` and ``sections`` (the validated config), ``data`` (training/validation examples),
``losses`` (the forward, task loss and metrics), ``penalty`` (one step's penalty),
``layer_penalty`` (its layer-wise terms, ``regularizer.layers``), ``trainer``
(one optimizer step), ``curve`` (the learning curve), ``state`` (resumable state and outputs on
disk), ``interrupt`` (Ctrl-C), ``landscape`` and ``dynamics`` (sharpness and Hessian figures),
``summary`` (the report and result), ``inputs`` (the files a run reads and their digests),
``board`` (TensorBoard scalars) and ``run`` (:func:`run_finetune`).

The penalty of one step is ``sum over the chosen checks of weight * max(0, error - epsilon)``,
with ``error`` the mean distance over the step's points, computed in the model's dtype and
differentiable. Checks with ``weight: 0`` are audited but not penalized. The top-level ``samples``
and ``num_funcs`` keep their audit meaning (the before/after audits); ``regularizer.samples`` and
``regularizer.num_funcs`` are the per-step penalty's. The model is in training mode for every
training pass (dropout and batch norm behave as in training) and in eval mode for the audits,
the validation metrics and the dynamics.

Determinism: the data order of epoch ``e`` comes from a generator seeded by ``(seed, e)``, every
random draw of the penalty at step ``s`` is keyed by ``(seed, s, row)`` (:class:`SampleRNG`), and
torch's global generator (dropout) is seeded with ``seed`` and saved in the state; so a resumed
run ends with the same weights as an uninterrupted one (bitwise on CPU).

Nothing here prints: :func:`run_finetune` reports progress through a callback.
"""

from __future__ import annotations

from ..io.atomic import atomic_write
from .config import (
    FINETUNE_KEYS,
    MAX_THREADS,
    RESUMABLE_CHANGES,
    TASK_LOSSES,
    FinetuneConfig,
    config_from_dict,
    load_config,
    parse_config,
)
from .curve import Curve
from .data import DatasetData, TensorData, load_data
from .inputs import input_digests, input_files
from .interrupt import FinetuneInterrupted
from .landscape import compute_dynamics
from .losses import evaluate, make_task_loss
from .run import Callback, check_outputs, run_finetune
from .sections import (
    DATA_KEYS,
    DYNAMICS_KEYS,
    OPTIMIZER_KEYS,
    OPTIMIZERS,
    OUTPUT_KEYS,
    POINTS,
    REGULARIZER_KEYS,
    DataConfig,
    DynamicsConfig,
    OptimizerConfig,
    OutputConfig,
    RegularizerConfig,
)
from .state import STATE_FORMAT, STATE_VERSION, load_state, remove_stale_temps, save_model_safetensors, save_state
from .summary import FinetuneResult
from .trainer import StepResult, Trainer, build_optimizer

__all__ = [
    "DATA_KEYS", "DYNAMICS_KEYS", "FINETUNE_KEYS", "MAX_THREADS", "OPTIMIZERS", "OPTIMIZER_KEYS", "OUTPUT_KEYS",
    "POINTS", "REGULARIZER_KEYS", "RESUMABLE_CHANGES", "STATE_FORMAT", "STATE_VERSION", "TASK_LOSSES",
    "Callback", "Curve", "DataConfig", "DatasetData", "DynamicsConfig", "FinetuneConfig", "FinetuneInterrupted",
    "FinetuneResult", "OptimizerConfig", "OutputConfig", "RegularizerConfig", "StepResult", "TensorData", "Trainer",
    "atomic_write", "build_optimizer", "check_outputs", "compute_dynamics", "config_from_dict", "evaluate",
    "input_digests", "input_files",
    "load_config", "load_data", "load_state", "make_task_loss", "parse_config", "remove_stale_temps",
    "run_finetune", "save_model_safetensors", "save_state",
]
