"""JSON Schema (draft 2020-12) of specs and fine-tune configs, for editors' completion and checks.

The keys come from the parsers' own key lists (``SPEC_KEYS``, ``MODEL_KEYS``, ``CHECK_KEYS``,
``FINETUNE_KEYS``, ...) and the allowed words from their choice lists, so a key the parser accepts
cannot be missing here: :data:`FIELDS` gives each key its JSON type, default and description, and
:func:`build_schema` refuses a parser key that has no entry (and an entry the parser lacks). The
parsers stay the authority on everything a schema cannot say (files, shapes, transforms)."""

from __future__ import annotations

from typing import Any

import transforms_zoo

from .finetune import config as finetune_config
from .finetune import sections as finetune_sections
from .spec import checks as spec_checks
from .spec import parse as spec_parse
from .spec import sections as spec_sections

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

_NUM = {"type": "number"}
_POS_INT = {"type": "integer", "minimum": 1}
_NAT = {"type": "integer", "minimum": 0}
_STR = {"type": "string", "minLength": 1}
_PATH = {"type": "string", "minLength": 1, "description": "a path, relative to this file's folder"}
_TRANSFORM = {
    "description": "a transform: a zoo name (rot90), a name with parameters ({rotate: {degrees: 30}}), "
                   "'module:callable', or a list of these applied in order (see `eqaudit transforms`)",
    "anyOf": [{"enum": transforms_zoo.names()},  # the zoo's names, for completion
              {"type": "string"}, {"type": "object", "minProperties": 1, "maxProperties": 1},
              {"type": "array", "minItems": 1}],
    "examples": ["rot90", "hflip", {"rotate": {"degrees": [-30, 30]}}, {"shift": {"dx": 1}}],
}

_LAYER_NAMES = {"anyOf": [{"const": "all"}, {"type": "array", "minItems": 1, "items": {"type": ["string", "integer"]}}]}


def _enum(words: tuple[str, ...], default: Any = None, **more: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"enum": list(words), **more}
    if default is not None:
        out["default"] = default
    return out


def _field(base: dict[str, Any], description: str, default: Any = None) -> dict[str, Any]:
    out = {**base, "description": description}
    if default is not None:
        out["default"] = default
    return out


#: Section -> (the parser's key list, {key: schema of its value}).
FIELDS: dict[str, tuple[tuple[str, ...], dict[str, dict[str, Any]]]] = {
    "spec": (spec_parse.SPEC_KEYS, {
        "model": {"$ref": "#/$defs/model"},
        "input": {"$ref": "#/$defs/input"},
        "distance": _field({"type": ["string", "number"]}, "default distance of the checks: l2, relative_l2, "
                           "cosine, kl_logits, cross_entropy_logits, lp:P, a number P, or 'module:callable'", "l2"),
        "samples": _field({"type": "integer", "minimum": 1, "maximum": 2**31}, "Monte Carlo sample size", 1024),
        "num_funcs": _field({"anyOf": [{"const": "all"}, _POS_INT]}, "checks drawn per sample ('all': every one)",
                            "all"),
        "seed": _field(_NAT, "random seed", 0),
        "checks": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/check"}},
        "layers": _field({"anyOf": [_LAYER_NAMES, {"$ref": "#/$defs/layers"}]},
                         "per-layer audit: 'all', module names as in model.named_modules(), or "
                         "{names, per_channel}"),
    }),
    "layers": (spec_sections.LAYERS_KEYS, {
        "names": {**_LAYER_NAMES, "default": "all"},
        "per_channel": _field({"type": "boolean"}, "also the error of each output channel", False),
    }),
    "model": (spec_sections.MODEL_KEYS, {
        "factory": _field({"type": "string", "pattern": ":"}, "'package.module:callable' or 'file.py:callable' "
                          "that builds the model"),
        "kwargs": _field({"type": "object"}, "keyword arguments of the factory", {}),
        "checkpoint": _field(_PATH, "the model file: a state dict (with factory), TorchScript, exported program, "
                             "pickled model (--trust-checkpoint) or .onnx graph"),
    }),
    "input": (spec_sections.INPUT_KEYS, {
        "shape": _field({"type": "array", "minItems": 1, "items": _POS_INT}, "shape of one sample, no batch"),
        "bounds": _field({"type": "array", "minItems": 1}, "[lo, hi], or nested lists ending in [lo, hi] pairs",
                         [0.0, 1.0]),
        "data": _field(_STR, "real samples: 'file.safetensors:key', or a folder of images"),
        "dataset": _field({"type": "string", "pattern": ":"}, "'module:callable' returning a torch Dataset"),
        "resize": _field({"type": "boolean"}, "resize a folder's images to input.shape", False),
        "dtype": _enum(spec_sections.DTYPES, description="dtype of the inputs"),
        "sampling": _enum(spec_sections.SAMPLINGS, "random", description="how samples are drawn"),
    }),
    "check": (spec_checks.CHECK_KEYS, {
        "name": _field(_STR, "the check's name in reports (default: from its transforms)"),
        "input": _TRANSFORM,
        "output": _TRANSFORM,
        "both": {**_TRANSFORM, "description": "one transform, the same draw applied to input and output"},
        "epsilon": _field({"type": "number", "minimum": 0}, "hinge of the fine-tune penalty", 0.0),
        "threshold": _field({"type": "number", "minimum": 0}, "the gate: exit 1 when the error exceeds it"),
        "weight": _field({"type": "number", "minimum": 0}, "weight of the check in the fine-tune penalty", 1.0),
        "distance": _field({"type": ["string", "number"]}, "this check's distance (default: the spec's)"),
        "group": _field({"anyOf": [{"type": "string", "pattern": "^[CDS][0-9]+$"}, {"type": "object"}]},
                        "a finite group (C4, D4, S3, {permutations: {k: K}}): every element is checked"),
        "mode": _enum(spec_checks.MODES, "sample", description="sample: finite transforms; lie: Lie derivative"),
        "mask": _enum(spec_checks.MASKS, "none", description="valid: compare only pixels inside the frame"),
        "worst_of": _field({"anyOf": [
            {"type": "integer", "minimum": 1},
            {"type": "object", "required": ["grid"], "additionalProperties": False,
             "properties": {"grid": {"type": "object", "minProperties": 1, "maxProperties": 1,
                                     "additionalProperties": {"type": "array", "items": {"type": "number"},
                                                              "minItems": 3, "maxItems": 3}}}},
        ]}, "per sample, the largest error over K draws, or over a grid {grid: {param: [lo, hi, count]}}"),
    }),
}

FINETUNE_FIELDS: dict[str, tuple[tuple[str, ...], dict[str, dict[str, Any]]]] = {
    "finetune": (finetune_config.FINETUNE_KEYS, {
        "data": {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/data"}]},
        "task_loss": _field({"anyOf": [{"enum": list(finetune_config.TASK_LOSSES)}, {"type": "string", "pattern": ":"}]},
                            "cross_entropy, mse, or 'module:callable'", "cross_entropy"),
        "optimizer": {"anyOf": [{"enum": list(finetune_sections.OPTIMIZERS)}, {"$ref": "#/$defs/optimizer"}]},
        "steps": _field(_POS_INT, "training steps (or epochs)"),
        "epochs": _field(_POS_INT, "training epochs (or steps)"),
        "batch_size": _field(_POS_INT, "training batch size", 64),
        "device": _field({"type": "string"}, "auto, cpu, cuda or cuda:K", "auto"),
        "threads": _field({"type": "integer", "minimum": 1, "maximum": finetune_config.MAX_THREADS},
                          "CPU threads"),
        "regularizer": {"$ref": "#/$defs/regularizer"},
        "output": {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/output"}]},
        "checkpoint_every": _field(_NAT, "steps between resumable states (0: never)", 100),
        "log_every": _field(_POS_INT, "steps between log lines", 10),
        "dynamics": {"anyOf": [{"type": "boolean"}, {"$ref": "#/$defs/dynamics"}]},
    }),
    "data": (finetune_sections.DATA_KEYS, {
        "path": _PATH, "inputs": _STR, "targets": _STR, "val_path": _PATH, "val_inputs": _STR,
        "val_targets": _STR, "dataset": _field(_STR, "'module:callable' returning a dataset"),
        "val_dataset": _field(_STR, "'module:callable' returning the validation dataset"),
        "kwargs": _field({"type": "object"}, "keyword arguments of the dataset callables"),
    }),
    "optimizer": (finetune_sections.OPTIMIZER_KEYS, {
        "name": _enum(finetune_sections.OPTIMIZERS, "adam"), "lr": _field({"type": "number", "minimum": 0},
                                                                         "learning rate"),
        "weight_decay": {"type": "number", "minimum": 0}, "betas": {"type": "array", "minItems": 2, "maxItems": 2},
        "momentum": {"type": "number", "minimum": 0}, "nesterov": {"type": "boolean"},
    }),
    "regularizer": (finetune_sections.REGULARIZER_KEYS, {
        "points": _enum(finetune_sections.POINTS, "data", description="where the penalty's samples come from"),
        "samples": _POS_INT, "num_funcs": {"anyOf": [{"const": "all"}, _POS_INT], "default": "all"},
        "every": _field(_POS_INT, "penalize every k-th step", 1),
        "layers": _field({"type": ["array", "object"]}, "per-layer penalty terms"),
    }),
    "output": (finetune_sections.OUTPUT_KEYS, {
        "checkpoint": {**_PATH, "pattern": "\\.safetensors$"}, "report": _PATH, "state": _PATH,
    }),
    "dynamics": (finetune_sections.DYNAMICS_KEYS, {
        "enabled": {"type": "boolean", "default": True}, "directions": _POS_INT,
        "displacements": {"type": "array", "items": _NUM}, "iterations": _POS_INT, "examples": _POS_INT,
        "every": _field(_NAT, "steps between dynamics measurements during training (0: before and after only)", 0),
        "samples": _field(_POS_INT, "Monte Carlo samples of each measurement during training", 64),
        "sharpness": _field({"type": "boolean"}, "also track the loss landscape's sharpness", False),
    }),
}


def section_schema(name: str, keys: tuple[str, ...], fields: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The object schema of one section: exactly the parser's ``keys``, no others."""
    missing = [k for k in keys if k not in fields]
    extra = [k for k in fields if k not in keys]
    if missing or extra:
        raise RuntimeError(f"schema of '{name}' out of step with its parser: missing {missing}, unknown {extra}")
    return {"type": "object", "properties": {k: fields[k] for k in keys}, "additionalProperties": False}


def build_schema(finetune: bool = False) -> dict[str, Any]:
    """The JSON Schema of a spec (or, with ``finetune``, of a fine-tune config)."""
    sections = {**FIELDS, **(FINETUNE_FIELDS if finetune else {})}
    defs = {name: section_schema(name, *sections[name]) for name in sections if name not in ("spec", "finetune")}
    defs["check"]["anyOf"] = [{"required": ["input"]}, {"required": ["both"]}, {"required": ["group"]}]
    root = section_schema("spec", *FIELDS["spec"])
    required = ["input", "checks"]
    if finetune:
        top = section_schema("finetune", *FINETUNE_FIELDS["finetune"])
        root["properties"].update(top["properties"])
        required += ["data", "output"]
        root["oneOf"] = [{"required": ["steps"]}, {"required": ["epochs"]}]
    what = "fine-tune config" if finetune else "spec"
    return {"$schema": SCHEMA_DIALECT, "title": f"eqaudit {what}", **root, "required": required, "$defs": defs}
