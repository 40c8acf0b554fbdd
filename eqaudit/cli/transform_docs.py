"""Renderings of the transform registry for ``eqaudit transforms``."""

from __future__ import annotations

import inspect
from typing import Any

import transforms_zoo
from transforms_zoo.base import Param, _fmt

from ..errors import EqauditError, did_you_mean


def _param_text(p: Param) -> str:
    default = "required" if p.required else f"default {_fmt(p.default) if p.default is not None else 'none'}"
    return f"{p.name} ({p.type_doc or 'value'}; {default})"


def transforms_table(width: int | None = None) -> Any:
    """A Rich table of every registered transform with its parameters; below 100 columns what a
    transform acts on and its parameters go under its name, so the descriptions keep their room."""
    from rich.markup import escape
    from rich.table import Table

    narrow = width is not None and width < 100
    table = Table(title="transforms_zoo", caption="eqaudit transforms NAME documents one")
    table.add_column("name", style="bold", no_wrap=not narrow, min_width=14 if narrow else None)
    if not narrow:
        table.add_column("acts on")
        table.add_column("parameters")
    table.add_column("what it does", ratio=2 if narrow else None)
    for name in transforms_zoo.names():
        cls = transforms_zoo.get(name)
        params = ", ".join(p.name + ("" if not p.required else "*") for p in cls.params) or "-"
        if narrow:
            table.add_row(f"{name}\n[dim not bold]{escape(cls.acts_on)}\n{escape(params)}[/]", escape(cls.summary))
        else:
            table.add_row(name, escape(cls.acts_on), escape(params), escape(cls.summary))
    return table


def describe_transform(name: str) -> Any:
    """A Rich renderable documenting one transform: summary, parameters and a YAML example."""
    from rich.console import Group
    from rich.markdown import Markdown

    if name not in transforms_zoo.names():
        raise EqauditError(f"unknown transform '{name}'", hint=did_you_mean(name, transforms_zoo.names()))
    cls = transforms_zoo.get(name)
    lines = [f"# {name}", "", cls.summary, "", f"**Acts on:** {cls.acts_on}", ""]
    doc = inspect.getdoc(cls)
    if doc and doc != inspect.getdoc(transforms_zoo.Transform):
        lines += [doc, ""]
    if cls.params:
        lines += ["**Parameters**", ""]
        for p in cls.params:
            lines.append(f"- `{_param_text(p)}`: {p.doc}")
        lines.append("")
    example_args = {p.name: p.default for p in cls.params if not p.required and p.default is not None}
    required = [p.name for p in cls.params if p.required]
    if required or example_args:
        args = ", ".join([f"{k}: ..." for k in required] + [f"{k}: {_fmt(v)}" for k, v in example_args.items()])
        example = f"input: {{{name}: {{{args}}}}}"
    else:
        example = f"input: {name}"
    lines += ["**In a spec**", "", "```yaml", example, "```"]
    return Group(Markdown("\n".join(lines)))
