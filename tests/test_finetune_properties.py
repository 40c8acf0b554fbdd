"""Property-based fine-tune configs: any value at any training key parses or is a located
EqauditError (never another exception), and generated valid configs train end to end, twice to the
same bytes."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eqaudit.errors import EqauditError
from eqaudit.finetune import FinetuneConfig, config_from_dict, run_finetune
from finetune_project import make_project

SETTINGS = settings(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("props"))


def _base() -> dict[str, Any]:
    return {
        "model": {"factory": "models.py:Tiny", "checkpoint": "tiny.safetensors"},
        "input": {"shape": [1, 4, 4]},
        "samples": 64,
        "seed": 3,
        "checks": [{"name": "hflip", "input": "hflip"}, {"name": "rot90", "input": "rot90", "weight": 0.5}],
        "data": {"path": "data.safetensors", "inputs": "x", "targets": "y", "val_inputs": "vx", "val_targets": "vy"},
        "optimizer": {"name": "adam", "lr": 0.05},
        "steps": 2,
        "batch_size": 16,
        "regularizer": {"points": "data"},
        "output": {"checkpoint": "out/p.safetensors"},
        "checkpoint_every": 0,
        "log_every": 1,
    }


KEYS = [
    ("data",), ("data", "path"), ("data", "inputs"), ("data", "val_targets"), ("data", "kwargs"), ("task_loss",),
    ("optimizer",), ("optimizer", "name"), ("optimizer", "lr"), ("optimizer", "betas"), ("optimizer", "momentum"),
    ("optimizer", "nesterov"), ("steps",), ("epochs",), ("batch_size",), ("device",), ("threads",),
    ("regularizer",), ("regularizer", "points"), ("regularizer", "samples"), ("regularizer", "num_funcs"),
    ("regularizer", "every"), ("output",), ("output", "checkpoint"), ("output", "report"), ("output", "state"),
    ("checkpoint_every",), ("log_every",), ("dynamics",), ("dynamics", "displacements"),
    ("dynamics", "directions"), ("checks", 0, "weight"), ("checks", 1, "mode"),
]
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "abc", "all", "sgd", "adamw", "random", "both", "lie", "mse", "x:y", "models.py:nope",
                     "out/p.safetensors", "tiny.safetensors", "data.safetensors", "cpu", "cuda:7", "é\u2028"]),
    st.lists(st.integers(-3, 3) | st.floats(-2, 2), max_size=3),
    st.dictionaries(st.sampled_from(["name", "lr", "x", "points", "path"]), st.integers(-2, 2) | st.text(max_size=3),
                    max_size=2),
)


def _set(doc: dict, path: tuple, value: Any) -> None:
    target = doc
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value


@SETTINGS
@given(changes=st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=3))
def test_any_value_at_any_key_parses_or_is_a_located_error(folder, changes):
    doc = _base()
    for path, value in changes:
        try:
            _set(doc, path, copy.deepcopy(value))
        except (TypeError, KeyError, IndexError):
            pass  # an earlier change replaced the section with a scalar
    try:
        cfg = config_from_dict(doc, folder)
    except EqauditError as exc:
        assert exc.file == "<config>" and exc.key, str(exc)
        assert "\n" not in str(exc)
        return
    assert isinstance(cfg, FinetuneConfig)
    assert cfg.threads is None or 1 <= cfg.threads <= 1024


TRAINING = st.fixed_dictionaries({
    "optimizer": st.sampled_from([{"name": "adam", "lr": 0.01}, {"name": "sgd", "lr": 0.1, "momentum": 0.9},
                                  "adamw"]),
    "regularizer": st.sampled_from([{"points": "data"}, {"points": "random", "samples": 8},
                                    {"points": "both", "samples": 4, "num_funcs": 1}, {"points": "data", "every": 2}]),
    "steps": st.integers(1, 3),
    "batch_size": st.sampled_from([8, 16, 200]),
    "log_every": st.integers(1, 3),
})


@settings(SETTINGS, max_examples=8)
@given(training=TRAINING)
def test_generated_configs_train_to_the_same_bytes_twice(folder, training):
    doc = {**_base(), **training}
    outputs = []
    for _ in range(2):
        result = run_finetune(config_from_dict(doc, folder), force=True, handle_sigint=False)
        assert result.steps == training["steps"] and len(result.curve) >= 1
        assert all(p["task_loss"] == p["task_loss"] for p in result.curve)  # finite, not NaN
        outputs.append((folder / "out" / "p.safetensors").read_bytes())
    assert outputs[0] == outputs[1]
