"""YAML loading that remembers where every key came from, so errors can name the line."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .files import file_kind
from ..errors import EqauditError


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
        mode = os.stat(path).st_mode
    except OSError:
        mode = None  # reported by the read below
    if mode is not None and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise EqauditError(f"is {file_kind(mode)}, not a YAML file", file=name,
                           hint="name the file itself; a pipe or device would block the run")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EqauditError("file not found", file=name, hint="check the path") from None
    except IsADirectoryError:
        raise EqauditError("is a directory, expected a YAML file", file=name) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EqauditError(f"cannot read: {exc}", file=name) from None
    return parse_yaml(text, name)


#: The most values that aliases (``*name``) may add to a document. A spec needs a handful; a
#: "billion laughs" file (nine levels of ten aliases each) would add a billion.
MAX_ALIAS_VALUES = 100_000


def parse_yaml(text: str, file: str = "<string>") -> YamlSource:
    """Parse YAML text, recording the line of each key; duplicate keys are errors.

    An alias shares the value built for its anchor (as ``yaml.safe_load`` does), so reading costs
    time linear in the text; aliases that add more than :data:`MAX_ALIAS_VALUES` values, and an
    alias inside its own anchor, are errors.
    """
    source = YamlSource(None, file)
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # rejects control characters (ReaderError) already here
        node = loader.get_single_node()
        if node is not None:
            source.data = _Builder(loader, source).build(node, "")
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "syntax error"
        raise EqauditError(f"invalid YAML: {problem}", file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise EqauditError(f"invalid YAML: {exc}", file=file) from None
    except RecursionError:
        raise EqauditError("invalid YAML: nested too deeply", file=file,
                           hint="flatten the nesting of lists and mappings") from None
    finally:
        if loader is not None:
            loader.dispose()
    return source


class _Builder:
    """Builds Python values from YAML nodes, each node once: an alias of a node already built
    shares its value (its key paths still get the anchor's lines)."""

    def __init__(self, loader: yaml.SafeLoader, source: YamlSource) -> None:
        self.loader = loader
        self.source = source
        self.built: dict[int, Any] = {}  # id(node) -> value
        self.size: dict[int, int] = {}  # id(node) -> number of values it expands to
        self.open: set[int] = set()  # collections being built (an alias to one is recursive)
        self.added = 0  # values added by aliases so far

    def build(self, node: yaml.Node, path: str) -> Any:
        nid = id(node)
        if nid in self.open:
            raise self.source.error(path or None, "recursive YAML alias: an alias refers to the anchor it is inside",
                                    hint="remove the alias, or move the anchor out of it").located(
                line=node.start_mark.line + 1)
        if nid in self.built:
            self.added += self.size[nid]
            if self.added > MAX_ALIAS_VALUES:
                raise self.source.error(
                    path or None, f"YAML aliases expand the document to more than {MAX_ALIAS_VALUES} values",
                    hint="write the values out, or use fewer nested aliases")
            self._record(node, path)
            return self.built[nid]
        if not isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            value = self.loader.construct_object(node, deep=True)
            self.built[nid], self.size[nid] = value, 1
            return value
        self.open.add(nid)
        size = 1
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            written: set[Any] = set()  # keys written in this mapping itself (not merged by '<<')
            explicit = {id(k) for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"}
            for key, key_node, value_node, sub in self._entries(node, path):
                own = id(key_node) in explicit
                if own and key in written:  # a key merged by '<<' may be set again, as in YAML
                    raise EqauditError(
                        f"duplicate key '{key}'",
                        file=self.source.file,
                        key=sub,
                        line=key_node.start_mark.line + 1,
                        hint=f"it is already set on line {self.source.lines.get(sub, '?')}",
                    )
                if own:
                    written.add(key)
                self.source.lines[sub] = key_node.start_mark.line + 1
                out[key] = self.build(value_node, sub)
                size += 1 + self.size[id(value_node)]
            value: Any = out
        else:
            items = []
            for i, item in enumerate(node.value):
                sub = join(path, i)
                self.source.lines[sub] = item.start_mark.line + 1
                items.append(self.build(item, sub))
                size += self.size[id(item)]
            value = items
        self.open.discard(nid)
        self.built[nid], self.size[nid] = value, size
        return value

    def _entries(self, node: yaml.MappingNode, path: str) -> Any:
        """``(key, key_node, value_node, key path)`` for each entry (merge keys ``<<`` flattened)."""
        self.loader.flatten_mapping(node)
        for key_node, value_node in node.value:
            key = self.loader.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise EqauditError(
                    "a mapping key must be a plain value", file=self.source.file, line=key_node.start_mark.line + 1
                ) from None
            yield key, key_node, value_node, join(path, key)

    def _record(self, node: yaml.Node, path: str) -> None:
        """The lines of the key paths under an alias (bounded: the alias's values were counted)."""
        if isinstance(node, yaml.MappingNode):
            for _, key_node, value_node, sub in self._entries(node, path):
                self.source.lines[sub] = key_node.start_mark.line + 1
                self._record(value_node, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                sub = join(path, i)
                self.source.lines[sub] = item.start_mark.line + 1
                self._record(item, sub)
