"""Fine-tuning methods shared by the surrogate backends.

* :mod:`.ridge`: the ridge refit of a force model linear in its weights (pure numpy).
* :mod:`.paper`: the FINETUNA paper's AdamW recipe, one loop for every backend (needs torch).

Import the submodules directly; this package imports neither, so numpy-only users do not
load torch.
"""
