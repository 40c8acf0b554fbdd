"""The JSON Schema of specs and fine-tune configs (``eqaudit schema``): it has exactly the keys the
parsers accept, every bundled spec and config satisfies it, and it rejects what the parser rejects
for a key or a type."""

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from eqaudit.cli import app
from eqaudit.errors import EqauditError
from eqaudit.finetune import config as finetune_config
from eqaudit.finetune import sections as finetune_sections
from eqaudit.schema import build_schema, section_schema
from eqaudit.spec import CHECK_KEYS, INPUT_KEYS, MODEL_KEYS, SPEC_KEYS, spec_from_dict
from eqaudit.spec.sections import LAYERS_KEYS

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "sample_configs").glob("*.yaml"))


def validator(finetune: bool) -> jsonschema.Draft202012Validator:
    schema = build_schema(finetune)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_schema_has_exactly_the_keys_the_parsers_accept():
    spec, config = build_schema(False), build_schema(True)
    assert list(spec["properties"]) == list(SPEC_KEYS)
    assert set(config["properties"]) == set(SPEC_KEYS) | set(finetune_config.FINETUNE_KEYS)
    defs = config["$defs"]
    for name, keys in [("model", MODEL_KEYS), ("input", INPUT_KEYS), ("check", CHECK_KEYS), ("layers", LAYERS_KEYS),
                       ("data", finetune_sections.DATA_KEYS), ("optimizer", finetune_sections.OPTIMIZER_KEYS),
                       ("regularizer", finetune_sections.REGULARIZER_KEYS), ("output", finetune_sections.OUTPUT_KEYS),
                       ("dynamics", finetune_sections.DYNAMICS_KEYS)]:
        assert list(defs[name]["properties"]) == list(keys), name
        assert defs[name]["additionalProperties"] is False


def test_a_parser_key_without_a_schema_entry_is_refused():
    with pytest.raises(RuntimeError, match="missing \\['new_key'\\]"):
        section_schema("model", (*MODEL_KEYS, "new_key"), {k: {} for k in MODEL_KEYS})
    with pytest.raises(RuntimeError, match="unknown \\['gone'\\]"):
        section_schema("model", MODEL_KEYS, {**{k: {} for k in MODEL_KEYS}, "gone": {}})


@pytest.mark.parametrize("path", SAMPLES, ids=[p.name for p in SAMPLES])
def test_every_bundled_spec_and_config_satisfies_its_schema(path):
    data = yaml.safe_load(path.read_text())
    finetune = bool(set(data) & set(finetune_config.FINETUNE_KEYS))
    assert list(validator(finetune).iter_errors(data)) == []


def test_the_samples_include_a_spec_and_a_config():
    kinds = {bool(set(yaml.safe_load(p.read_text())) & set(finetune_config.FINETUNE_KEYS)) for p in SAMPLES}
    assert kinds == {True, False}


GOOD = {"model": {"factory": "m.py:Net"}, "input": {"shape": [1, 8, 8]}, "checks": [{"input": "rot90"}]}


@pytest.mark.parametrize("change, where", [
    ({"sample": 10}, "sample"),                                             # a typo'd top-level key
    ({"samples": 0}, "samples"),                                            # below the minimum
    ({"samples": "many"}, "samples"),
    ({"checks": []}, "checks"),
    ({"checks": [{"input": "rot90", "mode": "exact"}]}, "mode"),
    ({"checks": [{"input": "rot90", "treshold": 0.1}]}, "treshold"),
    ({"checks": [{"threshold": 0.1}]}, "checks/0"),                         # no transform at all
    ({"input": {"shape": [1, 0]}}, "shape"),
    ({"input": {"shape": [8], "sampling": "grid"}}, "sampling"),
    ({"model": {"factory": "m.py:Net", "weights": "x.pt"}}, "weights"),
])
def test_invalid_specs_are_rejected(change, where):
    errors = list(validator(False).iter_errors({**GOOD, **change}))
    assert errors and any(where in (e.message + " " + "/".join(map(str, e.absolute_path))) for e in errors)
    with pytest.raises(EqauditError):  # the parser refuses it too: the schema is not stricter than it
        spec_from_dict({**GOOD, **change})


def test_the_valid_example_parses():
    assert list(validator(False).iter_errors(GOOD)) == []
    assert spec_from_dict(GOOD).checks[0].name
    both_and_group = {**GOOD, "checks": [{"both": "hflip"}, {"group": "C4"}]}
    assert list(validator(False).iter_errors(both_and_group)) == []
    assert len(spec_from_dict(both_and_group).checks) == 2


def test_the_transform_names_are_offered_for_completion():
    import transforms_zoo

    check = build_schema(False)["$defs"]["check"]["properties"]
    assert set(check["input"]["anyOf"][0]["enum"]) == set(transforms_zoo.names()) >= {"rot90", "hflip", "rotate3d"}


def test_a_config_needs_steps_or_epochs_and_data():
    good = {**GOOD, "data": "train.safetensors", "output": "ft.safetensors", "steps": 10}
    assert list(validator(True).iter_errors(good)) == []
    shorthands = {**good, "optimizer": "sgd", "dynamics": True}  # the parser's shorthands
    assert list(validator(True).iter_errors(shorthands)) == []
    assert list(validator(True).iter_errors({**good, "epochs": 2}))          # both
    assert list(validator(True).iter_errors({k: v for k, v in good.items() if k != "data"}))
    assert list(validator(True).iter_errors({**good, "optimizer": {"name": "lbfgs"}}))
    assert list(validator(False).iter_errors(good))                         # training keys are not spec keys


def test_the_schema_command_prints_the_schema(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0 and json.loads(result.output) == build_schema(False)
    out = tmp_path / "ft.json"
    assert runner.invoke(app, ["schema", "--finetune", "--output", str(out)]).exit_code == 0
    assert json.loads(out.read_text()) == build_schema(True)
