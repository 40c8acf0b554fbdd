"""Adapters for equivariant-network libraries, in one import: e3nn irreps (``irreps.py``) and
escnn-style field actions (``fields.py``).

These are output actions for models whose outputs are not plain images or points:

- ``irreps`` rotates e3nn irreps features by the Wigner-D matrices of a random 3-D rotation and
  the model's input (points, vectors or irreps features) by the same rotation. It is written under
  ``both:`` so that the engine hands the SAME draw to both sides::

      both: {irreps: {irreps: "1x0e + 1x1o"}}                 # input: points (..., 3)
      both: {irreps: {input: "5x0e + 2x1o", irreps: "1x2e"}}  # input: irreps features

  Which side a tensor is on is told by the size of its last dimension (the input's or the output
  representation's dimension); two different representations of the same size are refused.
  e3nn is optional: it is imported when an ``irreps`` transform is built (``pip install
  'eqaudit[e3nn]'``).
- ``regular_c4`` rotates a feature map of C4-regular fields (escnn's ``regular_repr`` of the
  cyclic group of order 4): ``rot90`` of the spatial dimensions plus a cyclic shift of the 4
  channels of each field.
- ``field`` is the general form for one fixed group element: a spatial move (``rot90``, ``hflip``,
  ``vflip``, ``transpose`` or ``identity``) plus a channel representation acting on each field of
  ``g`` channels, given as a permutation or a ``g x g`` matrix (escnn's ``FieldType.transform``).
"""

from __future__ import annotations

from transforms_zoo.fields import Field, RegularC4
from transforms_zoo.irreps import IrrepsRotation, wigner_d

__all__ = ["Field", "IrrepsRotation", "RegularC4", "wigner_d"]
