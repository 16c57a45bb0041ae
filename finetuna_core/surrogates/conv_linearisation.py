"""Old import path of :mod:`finetuna_core.surrogates.sevennet.conv_linearisation`."""

from .sevennet.conv_linearisation import Linearisation, PairOperator, linearise, pair_operator_floats

__all__ = ["Linearisation", "PairOperator", "linearise", "pair_operator_floats"]
