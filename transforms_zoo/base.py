"""One import for plugin authors: the protocol, the parameter parsers, the registry and the
builder, under the names they had before the zoo was split into modules (``transforms_zoo.base``).
"""

from __future__ import annotations

from transforms_zoo.builder import CallableTransform, Compose, build
from transforms_zoo.errors import TransformError
from transforms_zoo.params import (
    INT_LIMIT,
    Param,
    boolean,
    int_or_range,
    integer,
    number,
    number_or_range,
    one_of,
    positive,
)
from transforms_zoo.protocol import Inverted, Transform, _fmt
from transforms_zoo.registry import (
    _REGISTRY,
    ENTRY_POINT_GROUP,
    _reset_plugins,
    get,
    names,
    plugin_failures,
    plugin_origin,
    register,
)

__all__ = [
    "CallableTransform", "Compose", "ENTRY_POINT_GROUP", "INT_LIMIT", "Inverted", "Param", "Transform",
    "TransformError", "_REGISTRY", "_fmt", "_reset_plugins", "boolean", "build", "get", "int_or_range",
    "integer", "names", "number", "number_or_range", "one_of", "plugin_failures", "plugin_origin",
    "positive", "register",
]
