"""Packaging glue that pyproject.toml cannot express: the repository's top-level ``sample_configs/``
folder ships inside the package as ``eqaudit._samples`` (the digits sample that ``eqaudit demo``
audits), in wheels and editable installs alike. Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

SAMPLES = "eqaudit._samples"

setup(
    packages=[*find_packages(include=["eqaudit", "eqaudit.*", "transforms_zoo", "transforms_zoo.*"]),
              SAMPLES, f"{SAMPLES}.sample_models"],
    package_dir={SAMPLES: "sample_configs"},
    package_data={"eqaudit": ["py.typed"], SAMPLES: ["*.yaml", "*.safetensors", "*.py"]},
    exclude_package_data={SAMPLES: ["digits_finetuned.*"]},
)
