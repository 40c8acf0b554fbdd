"""YAML loading that remembers where every key came from, so errors can name the line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import EqauditError


@dataclass
class YamlSource:
    """A parsed YAML document plus the line of every key path (``checks[2].input.rotate``)."""

    data: Any
    file: str
    lines: dict[str, int] = field(default_factory=dict)

    def line_of(self, key: str | None) -> int | None:
        """The line of ``key``, or of its nearest enclosing key that has one."""
        while key:
            if key in self.lines:
                return self.lines[key]
            key = _parent(key)
        return None

    def error(self, key: str | None, message: str, hint: str | None = None) -> EqauditError:
        """An :class:`EqauditError` located at ``key`` in this file."""
        return EqauditError(message, file=self.file, key=key, line=self.line_of(key), hint=hint)


def _parent(key: str) -> str:
    cut = max(key.rfind("."), key.rfind("["))
    return key[:cut] if cut > 0 else ""


def join(prefix: str, key: object) -> str:
    """Append a mapping key (``a.b``) or a list index (``a[3]``) to a key path."""
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else str(key)


def load_yaml(path: str | Path, display: str | None = None) -> YamlSource:
    """Read and parse ``path``; unreadable files and YAML syntax errors become EqauditError."""
    name = display or str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EqauditError("file not found", file=name, hint="check the path") from None
    except IsADirectoryError:
        raise EqauditError("is a directory, expected a YAML file", file=name) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EqauditError(f"cannot read: {exc}", file=name) from None
    return parse_yaml(text, name)


def parse_yaml(text: str, file: str = "<string>") -> YamlSource:
    """Parse YAML text, recording the line of each key; duplicate keys are errors."""
    source = YamlSource(None, file)
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # rejects control characters (ReaderError) already here
        node = loader.get_single_node()
        if node is not None:
            source.data = _construct(loader, node, "", source)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "syntax error"
        raise EqauditError(f"invalid YAML: {problem}", file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise EqauditError(f"invalid YAML: {exc}", file=file) from None
    finally:
        if loader is not None:
            loader.dispose()
    return source


def _construct(loader: yaml.SafeLoader, node: yaml.Node, path: str, source: YamlSource) -> Any:
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise EqauditError(
                    "a mapping key must be a plain value", file=source.file, line=key_node.start_mark.line + 1
                ) from None
            sub = join(path, key)
            if key in out:
                raise EqauditError(
                    f"duplicate key '{key}'",
                    file=source.file,
                    key=sub,
                    line=key_node.start_mark.line + 1,
                    hint=f"it is already set on line {source.lines.get(sub, '?')}",
                )
            source.lines[sub] = key_node.start_mark.line + 1
            out[key] = _construct(loader, value_node, sub, source)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            sub = join(path, i)
            source.lines[sub] = item.start_mark.line + 1
            items.append(_construct(loader, item, sub, source))
        return items
    return loader.construct_object(node, deep=True)
