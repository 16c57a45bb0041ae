"""Surrogate models for the online learner, and their registry.

Backends register lazily, so importing this package does not import torch::

    from finetuna_core.surrogates import make_surrogate
    surrogate = make_surrogate("sevennet", ensemble_size=5)
"""

from __future__ import annotations

from typing import Any

from .base import (
    FineTuneReport,
    LabelledPoint,
    Prediction,
    Surrogate,
    SurrogateCalculator,
    available_surrogates,
    free_atom_mask,
    make_surrogate,
    register_surrogate,
)


def _make_sevennet(**options: Any) -> Surrogate:
    from .sevennet import SevenNetSurrogate

    return SevenNetSurrogate(**options)


def _make_fairchem(**options: Any) -> Surrogate:
    from .fairchem import FairchemSurrogate

    if "checkpoint" not in options:
        raise ValueError("the fairchem surrogate needs checkpoint=PATH (a local file; nothing is downloaded)")
    return FairchemSurrogate(**options)


register_surrogate("sevennet", _make_sevennet)
register_surrogate("fairchem", _make_fairchem)

__all__ = [
    "FineTuneReport",
    "LabelledPoint",
    "Prediction",
    "Surrogate",
    "SurrogateCalculator",
    "available_surrogates",
    "free_atom_mask",
    "make_surrogate",
    "register_surrogate",
]
