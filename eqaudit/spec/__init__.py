"""The audit spec: YAML -> a validated, immutable :class:`Spec` (``load_spec``, ``parse_spec``,
``spec_from_dict``), and the public field parsers the fine-tune config shares.

Modules: ``model`` (the data classes), ``parse`` (the top level), ``sections`` (model, input,
layers), ``checks`` (one check), ``fields`` (parsers of single values), ``probe`` (a dry run of the
input transforms on zeros of the declared shape, for validate).
"""

from __future__ import annotations

from .checks import CHECK_KEYS, MASKS, MODES
from .fields import (
    INT_MAX,
    MAX_SAMPLES,
    check_keys,
    check_seed,
    describe_value,
    expect_mapping,
    parse_bool,
    parse_choice,
    parse_float,
    parse_int,
    resolve_path,
)
from .model import CheckSpec, DataRef, InputSpec, ModelSpec, Spec
from .parse import SPEC_KEYS, load_spec, parse_spec, spec_from_dict
from .probe import probe_transforms
from .sections import DTYPES, INPUT_KEYS, MAX_SAMPLE_ELEMENTS, MODEL_KEYS, SAMPLINGS, SOBOL_MAX_DIM

__all__ = [
    "CHECK_KEYS", "DTYPES", "INPUT_KEYS", "INT_MAX", "MASKS", "MAX_SAMPLES", "MAX_SAMPLE_ELEMENTS", "MODEL_KEYS",
    "MODES", "SAMPLINGS", "SOBOL_MAX_DIM", "SPEC_KEYS", "CheckSpec", "DataRef", "InputSpec", "ModelSpec", "Spec",
    "check_keys", "check_seed", "describe_value", "expect_mapping", "load_spec", "parse_bool", "parse_choice",
    "parse_float", "parse_int",
    "parse_spec", "probe_transforms", "resolve_path", "spec_from_dict",
]
