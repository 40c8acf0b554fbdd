"""Cost of a fine-tune step with the equivariance penalty, as a ratio to a plain training step.

With `regularizer.points: data` the training batch is the Monte Carlo sample and its outputs
(already computed for the task loss) are reused as model(x), so a penalty step needs one
forward+backward of the batch plus one per chosen check: at most 1 + num_funcs times a plain
step. This script times both kinds of step on the bundled digits sample (interleaved, R rounds
of S steps; the ratio is the median over rounds of the same-round ratio), counts the forward
calls, and prints the ratio beside that bound.

    python benchmarks/finetune_step.py [--device cpu|cuda] [--batch-size 256] [--rounds 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eqaudit.io.checkpoint import load_model  # noqa: E402
from eqaudit.finetune import Trainer, config_from_dict, load_data  # noqa: E402
from eqaudit.io.yaml_source import load_yaml  # noqa: E402

CONFIG = ROOT / "sample_configs" / "finetune_digits.yaml"


def make_trainer(penalized: bool, num_funcs: int | str, batch_size: int, device: torch.device) -> Trainer:
    data = dict(load_yaml(CONFIG).data)
    data["checks"] = [dict(c, weight=(c.get("weight", 1.0) if penalized else 0.0)) for c in data["checks"]]
    data["batch_size"] = batch_size
    data["regularizer"] = {"points": "data", "num_funcs": num_funcs, "every": 1}
    data["output"] = {"checkpoint": "/tmp/eqaudit-bench-unused.safetensors"}
    cfg = config_from_dict(data, base_dir=CONFIG.parent)
    spec = cfg.spec
    model = load_model(spec.model.checkpoint, factory=spec.model.factory, kwargs=dict(spec.model.kwargs),
                       base_dir=spec.base_dir).to(device)
    train, _ = load_data(cfg)
    return Trainer(cfg, model, train, device)


class CountForwards:
    def __init__(self, model: torch.nn.Module) -> None:
        self.calls = 0
        model.register_forward_pre_hook(self._hook)

    def _hook(self, *_: object) -> None:
        self.calls += 1


def time_steps(trainer: Trainer, steps: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10, help="steps per timed round")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    result: dict[str, object] = {"device": str(device), "batch_size": args.batch_size, "rounds": args.rounds}
    n_checks = len(load_yaml(CONFIG).data["checks"])
    for num_funcs in sorted({1, n_checks}):
        plain = make_trainer(False, "all", args.batch_size, device)
        penal = make_trainer(True, num_funcs, args.batch_size, device)
        counters = CountForwards(plain.model), CountForwards(penal.model)
        time_steps(plain, 2, device), time_steps(penal, 2, device)  # warm-up
        c0 = [c.calls for c in counters]
        time_steps(plain, 1, device), time_steps(penal, 1, device)  # the counted step
        fwd = [c.calls - b for c, b in zip(counters, c0)]
        t_plain, t_pen = [], []
        for _ in range(args.rounds):
            t_plain.append(time_steps(plain, args.steps, device))
            t_pen.append(time_steps(penal, args.steps, device))
        ratio = statistics.median(p / q for p, q in zip(t_pen, t_plain))  # same-round ratios
        result[f"num_funcs_{num_funcs}"] = {
            "plain_step_s": statistics.median(t_plain),
            "penalty_step_s": statistics.median(t_pen),
            "ratio": ratio,
            "bound": 1 + num_funcs,
            "forwards_plain_step": fwd[0],
            "forwards_penalty_step": fwd[1],
            "within_bound": ratio <= 1 + num_funcs,
        }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"fine-tune step cost, digits CNN, batch {args.batch_size}, device {device}, median of {args.rounds}x{args.steps} steps")
    for k, v in result.items():
        if isinstance(v, dict):
            print(f"  {k}: penalty/plain = {v['ratio']:.2f} (bound {v['bound']}), forwards per step "
                  f"{v['forwards_plain_step']} vs {v['forwards_penalty_step']}, "
                  f"{v['plain_step_s'] * 1e3:.2f} ms vs {v['penalty_step_s'] * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
