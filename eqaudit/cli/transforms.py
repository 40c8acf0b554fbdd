"""``eqaudit transforms``: list the transforms specs can name, document one, or verify their group
laws numerically (exit 1 on a failure)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .errors import handles_errors
from .options import DebugOpt
from .output import err, escape, out
from ..errors import EqauditError


@handles_errors()
def transforms(
    name: Annotated[Optional[str], typer.Argument(help="Document one transform.")] = None,
    check: Annotated[
        bool,
        typer.Option("--check", help="Verify identity, composition and inverses numerically (exit 1 on a failure)."),
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """List the transforms that specs can name, or document one."""
    from .transform_docs import describe_transform, transforms_table

    if check:
        _check_transforms(name)
    elif name is None:
        out.print(transforms_table(out.width))
    else:
        out.print(describe_transform(name))


def _check_transforms(name: Optional[str]) -> None:
    """``eqaudit transforms --check``: a table of the group laws per transform; exit 1 on a failure."""
    from rich.table import Table

    import transforms_zoo
    from transforms_zoo.group import verify_transform

    names = [name] if name is not None else transforms_zoo.names()
    if name is not None:
        try:
            transforms_zoo.get(name)
        except transforms_zoo.TransformError as exc:
            raise EqauditError(exc.message, key=name, hint=exc.hint) from None
    table = Table(title="transform group laws (numerical check)")
    for col in ("transform", "group action", "law", "max error", "status"):
        table.add_column(col)
    failed = []
    for n in names:
        cls = transforms_zoo.get(n)
        action = "approximate" if getattr(cls, "approximate", False) else (
            "yes" if getattr(cls, "group_action", False) else "no")
        for i, (law, error, status) in enumerate(verify_transform(n)):
            color = {"ok": "green", "FAIL": "bold red"}.get(status, "dim")
            table.add_row(n if i == 0 else "", action if i == 0 else "", escape(law),
                          "" if error is None else f"{error:.2e}", f"[{color}]{status}[/]")
            if status == "FAIL":
                failed.append(f"{n}: {law}")
    out.print(table)
    if failed:
        err.print("[bold red]FAILED[/]: " + escape("; ".join(failed)))
        raise typer.Exit(1)
