"""SevenNet-0 surrogate with fast fine-tuning of its linear output head.

SevenNet-0's energy is exactly linear in one effective 128-vector of its two output-head
layers, so its forces on the free atoms are ``F = M w`` with ``M`` a per-structure Jacobian;
fine-tuning ``w`` on parent forces is then a small ridge regression.  One job per module:

* :mod:`.settings`: :class:`SevenNetSettings`, every option with its default;
* :mod:`.checkpoint`: weights-only loading of sevenn checkpoints (relies on sevenn internals;
  the project pins the sevenn versions it was checked against);
* :mod:`.network`: neighbour graphs, the frozen backbone and the linear head (``w``);
* :mod:`.conv_linearisation` and :mod:`.jacobian`: the Jacobian engines;
* :mod:`.ensemble`: predictions with the ensemble's force spread;
* :mod:`.surrogate`: :class:`SevenNetSurrogate`, which ties them to the shared fine-tuning
  methods in :mod:`finetuna_core.surrogates.training`.
"""

from __future__ import annotations

from .checkpoint import load_pretrained_sevennet, safe_torch_load
from .settings import JacobianMode, SevenNetSettings
from .surrogate import SAVE_FORMAT, SevenNetSurrogate

__all__ = [
    "SAVE_FORMAT",
    "JacobianMode",
    "SevenNetSettings",
    "SevenNetSurrogate",
    "load_pretrained_sevennet",
    "safe_torch_load",
]
