"""``eqaudit demo``: audit the bundled digits CNN with its bundled spec, the same run as
``eqaudit measure --spec sample_configs/digits.yaml`` from a clone, and working from an installed
wheel too (the samples ship inside the package as ``eqaudit._samples``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .errors import handles_errors
from .html_report import HtmlOpt
from .measure import JsonOpt, JunitOpt, LayersOpt, MarkdownOpt, QuantilesOpt, SamplesOpt, measure
from .options import DebugOpt, DeviceOpt, QuietOpt, SeedOpt

#: The bundled specs ``--sample`` chooses from (files in the samples folder, without ``.yaml``).
SAMPLES = ("digits", "digits_invariance", "blur")

SampleOpt = Annotated[str, typer.Option(
    "--sample", help="Which bundled spec: digits (passes), digits_invariance (fails: exit 1) or blur.")]
WhereOpt = Annotated[bool, typer.Option("--where", help="Print the folder of the bundled samples and exit.")]


def samples_dir() -> Path:
    """The folder of the bundled samples: ``sample_configs/`` of a clone or an editable install,
    ``site-packages/eqaudit/_samples`` of a wheel."""
    from importlib import resources

    from ..errors import EqauditError

    try:
        folder = Path(str(resources.files("eqaudit._samples")))
    except ModuleNotFoundError:
        folder = None
    if folder is None or not (folder / "digits.yaml").is_file():
        raise EqauditError("the bundled samples are not installed (eqaudit._samples is missing)",
                           hint="reinstall eqaudit: pip install --force-reinstall eqaudit")
    return folder


@handles_errors()
def demo(
    sample: SampleOpt = "digits",
    samples: SamplesOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = "auto",
    json_path: JsonOpt = None,
    junit: JunitOpt = None,
    markdown: MarkdownOpt = None,
    html: HtmlOpt = None,
    quantiles: QuantilesOpt = False,
    layers: LayersOpt = False,
    where: WhereOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Audit the bundled digits CNN with its bundled spec (exit codes as for measure)."""
    from ..errors import EqauditError, did_you_mean

    if sample not in SAMPLES:
        raise EqauditError(f"unknown sample '{sample}'", key="--sample", hint=did_you_mean(sample, SAMPLES))
    folder = samples_dir()
    if where:
        typer.echo(str(folder))
        raise typer.Exit(0)
    measure(spec=folder / f"{sample}.yaml", samples=samples, seed=seed, device=device, json_path=json_path,
            junit=junit, markdown=markdown, html=html, quantiles=quantiles, layers=layers, quiet=quiet, debug=debug)
