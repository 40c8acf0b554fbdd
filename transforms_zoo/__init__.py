"""transforms_zoo: named, batched transforms for equivariance checks.

Each transform separates drawing its random parameters (``sample(rng)``) from applying them
(``apply(x, params)``), so the same draw can act on a model's input and on its output. The zoo
imports nothing from eqaudit; its errors are :class:`TransformError`.

>>> import transforms_zoo as tz
>>> t = tz.build({"shift": {"dx": 1, "dy": 0}})
>>> y = t(x)                      # or t.apply(x, t.sample(rng))
"""

from transforms_zoo.builder import CallableTransform, Compose, build
from transforms_zoo.errors import TransformError
from transforms_zoo.fused import fused_draws
from transforms_zoo.params import Param
from transforms_zoo.protocol import Transform
from transforms_zoo.random import SampleRNG
from transforms_zoo.registry import get, names, register
from transforms_zoo import image, interpolate, noise, points, sequence  # noqa: F401  (registers the built-ins)
from transforms_zoo import fields, irreps  # noqa: F401  (escnn-style field actions, e3nn irreps; e3nn imported on use)
from transforms_zoo import base, adapters  # noqa: F401  (the names of the modules before the split)

__all__ = [
    "CallableTransform",
    "Compose",
    "Param",
    "SampleRNG",
    "Transform",
    "TransformError",
    "build",
    "fused_draws",
    "get",
    "names",
    "register",
]
