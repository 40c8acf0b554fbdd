"""The trainer: one optimizer step at a time (task loss plus penalty), every random draw keyed by
``(seed, step)``; gradients averaged across processes under torchrun."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .config import FinetuneConfig
from .data import Examples, move_batch, sample_shape
from .losses import call_model, loss_value, make_task_loss
from .penalty import step_penalty
from .sections import OptimizerConfig


@dataclass
class StepResult:
    """What one step computed (read back to the host once)."""

    step: int  # steps done, 1-based
    epoch: float
    task_loss: float
    penalty: float | None  # None on steps without the penalty
    errors: dict[str, float]


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s data order."""
    digest = hashlib.sha256(f"eqaudit.finetune.order:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def build_optimizer(options: OptimizerConfig, params: Iterable[Any]) -> Any:
    """The torch optimizer that ``options`` names, over ``params``."""
    import torch

    params = list(params)
    if options.name == "adam":
        return torch.optim.Adam(params, lr=options.lr, betas=options.betas, weight_decay=options.weight_decay)
    if options.name == "adamw":
        return torch.optim.AdamW(params, lr=options.lr, betas=options.betas, weight_decay=options.weight_decay)
    return torch.optim.SGD(params, lr=options.lr, momentum=options.momentum, weight_decay=options.weight_decay,
                           nesterov=options.nesterov)


class Trainer:
    """One optimizer step at a time, every draw keyed by ``(seed, step)``.

    ``trainer.step()`` runs the task loss on the step's batch and, on penalty steps, the
    equivariance penalty: with ``points: data`` one forward of the batch (whose outputs serve
    both the task loss and the penalty) plus one forward of the transformed points per chosen
    check.
    """

    def __init__(self, cfg: FinetuneConfig, model: Any, train: Examples, device: Any,
                 *, total_steps: int | None = None, world: Any = None) -> None:
        import torch
        from transforms_zoo.random import stream_id

        from ..engine.device import model_dtype
        from ..engine.distributed import World
        from ..engine.sampling import PointSampler

        self.cfg = cfg
        self.spec = cfg.spec
        self.model = model
        self.train = train
        self.device = torch.device(device)
        self.dtype = model_dtype(model)
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise cfg.error("model", "the model has no trainable parameters")
        self.optimizer = build_optimizer(cfg.optimizer, self.params)
        self.loss_fn = make_task_loss(cfg)
        self.batch_size = min(cfg.batch_size, len(train))
        self.world = world if world is not None else World()
        if self.world.size > 1 and self.batch_size % self.world.size:
            raise cfg.error("batch_size", f"batch size {self.batch_size} does not split evenly across "
                            f"{self.world.size} processes", f"use a multiple of {self.world.size}")
        self.steps_per_epoch = max(1, len(train) // self.batch_size)
        self.total_steps = total_steps if total_steps is not None else (
            cfg.steps if cfg.steps is not None else int(cfg.epochs or 1) * self.steps_per_epoch)
        self.penalized = [j for j, c in enumerate(self.spec.checks) if c.weight > 0]
        self.points = cfg.regularizer.points
        self.samples = cfg.regularizer.samples or self.batch_size
        self.sampler = PointSampler(self.spec, self.device, self.dtype) if self.points != "data" else None
        if self.points == "both" and self.sampler is not None:
            shape = sample_shape(train)
            if tuple(self.sampler.shape) != shape:
                raise cfg.error("regularizer.points", f"'both' mixes training samples of shape {list(shape)} "
                                f"with input points of shape {list(self.sampler.shape)}", "use data or random")
        self.layers = None
        if cfg.regularizer.layers:
            from .layer_penalty import LayerPenalty

            self.layers = LayerPenalty(cfg, model, cfg.regularizer.layers)
        self.step_idx = 0
        self._perm_epoch: int | None = None
        self._perm: Any = None
        self._stream = stream_id("eqaudit.finetune")

    # -- deterministic draws --------------------------------------------------------------------
    def batch_indices(self, step: int) -> Any:
        """Rows of the training data used at ``step`` (0-based): a permutation per epoch."""
        import torch

        epoch, position = divmod(step, self.steps_per_epoch)
        if self._perm_epoch != epoch:
            generator = torch.Generator(device="cpu").manual_seed(epoch_seed(self.spec.seed, epoch))
            self._perm = torch.randperm(len(self.train), generator=generator)
            self._perm_epoch = epoch
        return self._perm[position * self.batch_size : (position + 1) * self.batch_size]

    def _rng(self, step: int, rows: int, tag: str) -> Any:
        from transforms_zoo import SampleRNG

        rng = SampleRNG.for_range(self.spec.seed, 0, rows, self.device, stream=self._stream)
        return rng.child(f"step:{step}").child(tag)

    def chosen_checks(self, step: int) -> list[int]:
        """The checks penalized at ``step``: all, or ``num_funcs`` drawn without replacement."""
        import torch
        from transforms_zoo import SampleRNG

        count = self.cfg.regularizer.num_funcs
        if count is None or count >= len(self.penalized):
            return list(self.penalized)
        rng = SampleRNG(self.spec.seed, torch.tensor([step], dtype=torch.int64), stream=self._stream).child("checks")
        picks = sorted(int(i) for i in rng.choice(count, len(self.penalized))[0])
        return [self.penalized[i] for i in picks]

    def penalty_step(self, step: int) -> bool:
        """Whether ``step`` (0-based) takes the penalty (``regularizer.every``)."""
        return bool(self.penalized) and step % self.cfg.regularizer.every == 0

    def penalty(self, inputs: Any, outputs: Any, step: int) -> tuple[Any, dict[str, Any]]:
        """``sum weight * relu(mean error - epsilon)`` over the checks chosen at ``step``, at the
        points ``inputs`` whose model outputs are ``outputs`` (differentiable; the model's dtype)."""
        rng = self._rng(step, inputs.shape[0], "penalty")
        base_passes = {"data": (0,), "random": (1,), "both": (0, 1)}[self.points]
        return step_penalty(self.cfg, self.model, self.chosen_checks(step), inputs, outputs, rng,
                            self.layers, base_passes)

    # -- one step -------------------------------------------------------------------------------
    def _penalty_points(self, step: int, inputs: Any, outputs: Any) -> tuple[Any, Any]:
        """The step's penalty points and their model outputs: the batch, random points, or both."""
        import torch

        point_sets, output_sets = [], []
        if self.points in ("data", "both"):
            point_sets.append(inputs)
            output_sets.append(outputs)
        if self.points in ("random", "both"):
            assert self.sampler is not None
            rng = self._rng(step, self.samples, "random")
            if self.world.size > 1:
                rng = rng.select(torch.arange(self.world.rank, self.samples, self.world.size, device=self.device))
            random_points = self.sampler.draw(rng)
            point_sets.append(random_points.to(inputs.dtype) if self.points == "both" else random_points)
            output_sets.append(call_model(self.model, point_sets[-1], self.cfg, "input"))
        if len(point_sets) == 1:
            return point_sets[0], output_sets[0]
        return torch.cat(point_sets), torch.cat(output_sets)

    def step(self) -> StepResult:
        """One optimizer step: forward, task loss, penalty (on penalty steps), backward, update."""
        import torch

        step = self.step_idx
        self.model.train()
        inputs, targets = self.train.batch(self._shard(self.batch_indices(step)))
        inputs, targets = move_batch(inputs, self.device, self.dtype), targets.to(self.device)
        take_penalty = self.penalty_step(step)
        if take_penalty and self.layers is not None:
            self.layers.start()  # the hooks record this step's passes: the batch's first
        outputs = call_model(self.model, inputs, self.cfg, "data.dataset" if self.cfg.data.dataset else "data.inputs")
        task = loss_value(self.loss_fn, outputs, targets, self.cfg)
        loss, penalty, check_errors = task, None, {}
        if take_penalty:
            penalty, check_errors = self.penalty(*self._penalty_points(step, inputs, outputs), step)
            loss = task + penalty.to(task.dtype)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # One read back to the host per step, after the backward pass is queued: the loss, the
        # task loss, the penalty and each check's error. A non-finite loss stops the run here,
        # before the optimizer touches the weights.
        logged = [loss, task] if penalty is None else [loss, task, penalty, *check_errors.values()]
        values = torch.stack([v.detach().to(torch.float64).reshape(()) for v in logged]).tolist()
        task_value = values[1]
        penalty_value = values[2] if penalty is not None else None
        errors = dict(zip(check_errors, values[3:])) if penalty is not None else {}
        if not math.isfinite(values[0]):
            raise self.cfg.error(
                "optimizer.lr", f"the loss became {values[0]} at step {step + 1} "
                f"(task loss {task_value}, penalty {penalty_value})", "lower the learning rate or the check weights")
        if self.world.size > 1:
            task_value, penalty_value = self._average_gradients(task_value, penalty_value)
        self.optimizer.step()
        self.step_idx = step + 1
        return StepResult(step + 1, (step + 1) / self.steps_per_epoch, task_value, penalty_value, errors)

    # -- data parallel --------------------------------------------------------------------------
    def _shard(self, rows: Any) -> Any:
        """This process's share of a batch: every ``world.size``-th row."""
        return rows if self.world.size == 1 else rows[self.world.rank :: self.world.size]

    def _average_gradients(self, task: float, penalty: float | None) -> tuple[float, float | None]:
        """Average the gradients (and the logged losses) over the processes, as
        DistributedDataParallel does: equal shards, so the result is the full batch's gradient."""
        import torch
        import torch.distributed as dist

        size = self.world.size
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads:
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat /= size
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
        logged = torch.tensor([task, penalty if penalty is not None else 0.0], dtype=torch.float64,
                              device=grads[0].device if grads else "cpu")
        dist.all_reduce(logged)
        logged /= size
        task_mean, penalty_mean = logged.tolist()  # one read back
        return task_mean, (penalty_mean if penalty is not None else None)

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The step, the model's and the optimizer's state."""
        return {"step": self.step_idx, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_idx = int(state["step"])
