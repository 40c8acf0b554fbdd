"""transforms_zoo: named, batched transforms for equivariance checks.

Each transform separates drawing its random parameters (``sample(rng)``) from applying them
(``apply(x, params)``), so the same draw can act on a model's input and on its output.

>>> import transforms_zoo as tz
>>> t = tz.build({"shift": {"dx": 1, "dy": 0}})
>>> y = t(x)                      # or t.apply(x, t.sample(rng))
"""

from transforms_zoo.base import (
    CallableTransform,
    Compose,
    Param,
    Transform,
    TransformError,
    build,
    get,
    names,
    register,
)
from transforms_zoo.random import SampleRNG
from transforms_zoo import image, noise, points, sequence  # noqa: F401  (registers the built-in transforms)
from transforms_zoo import adapters  # noqa: F401  (e3nn irreps and escnn-style field actions; e3nn imported on use)

__all__ = [
    "CallableTransform",
    "Compose",
    "Param",
    "SampleRNG",
    "Transform",
    "TransformError",
    "build",
    "get",
    "names",
    "register",
]
