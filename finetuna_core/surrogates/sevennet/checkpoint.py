"""Loading SevenNet checkpoints without ``torch.load(weights_only=False)``.

``sevenn`` unpickles its checkpoints with ``weights_only=False``, which runs any code a file
carries.  This module never does: it reads the wheel's own checkpoint with ``weights_only=True``
and an allowlist of the numpy reconstruction globals the file needs (``_reconstruct``,
``ndarray``, ``dtype`` and the numeric dtype classes), then hands the config and weights to
sevenn's model builder.

To do so it overrides ``sevenn.checkpoint.SevenNetCheckpoint._load`` and fills that class's
private attributes, and it calls sevenn's private ``_config_cp_routine``.  Those are sevenn
internals, checked against sevenn 0.13 only: the project pins ``sevenn>=0.13,<0.14``
(pyproject.toml, constraints.txt).  Check this module before moving the pin.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from typing import Any

import numpy as np
import torch

__all__ = ["checkpoint_path", "file_sha256", "load_pretrained_sevennet", "safe_torch_load"]


def _safe_numpy_globals() -> list[Any]:
    """The numpy globals SevenNet's checkpoints pickle (plain arrays of numbers)."""
    core = getattr(np, "_core", None) or np.core  # numpy >= 2 / numpy 1.x
    reconstruct = core.multiarray._reconstruct
    allowed: list[Any] = [
        reconstruct,
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
    ]
    for dt in (np.float16, np.float32, np.float64, np.int32, np.int64, np.bool_):
        allowed.append(type(np.dtype(dt)))
    return allowed


def safe_torch_load(path: str | os.PathLike[str]) -> Any:
    """``torch.load(weights_only=True)`` that also accepts numeric numpy arrays."""
    with torch.serialization.safe_globals(_safe_numpy_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_path(model: str) -> str:
    """Absolute path of ``model``: an existing file, or a pre-trained name shipped in the wheel."""
    if os.path.isfile(model):
        return os.path.abspath(model)
    import sevenn.util

    try:
        path = sevenn.util.pretrained_name_to_path(model)
    except Exception as exc:  # sevenn raises plain ValueError/NotImplementedError
        raise ValueError(f"unknown SevenNet model {model!r}: {exc}") from exc
    if not os.path.isfile(path):
        raise ValueError(
            f"SevenNet model {model!r} is not shipped in the installed sevenn wheel "
            f"(expected {path}); only wheel-bundled models load offline, e.g. '7net-0'"
        )
    return path


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_pretrained_sevennet(model: str = "7net-0") -> tuple[torch.nn.Module, dict[str, Any], str]:
    """Build a pre-trained SevenNet model without ``weights_only=False``.

    Returns ``(model, config, checkpoint_path)``; the model is in eval mode, on CPU, with
    ``is_batch_data=False``.  Refuses models whose output head is not two bias-free linear
    layers (the surrogate's fine-tuning relies on it) and multi-fidelity models.
    """
    from sevenn.checkpoint import SevenNetCheckpoint, _config_cp_routine

    class _SafeCheckpoint(SevenNetCheckpoint):
        """sevenn's checkpoint reader with its ``_load`` made weights-only."""

        def _load(self) -> None:
            cp = safe_torch_load(self.checkpoint_path)
            self._config_original = cp.get("config", {})
            self._model_state_dict = cp.get("model_state_dict", {})
            self._optimizer_state_dict = {}
            self._scheduler_state_dict = {}
            self._epoch = cp.get("epoch")
            self._time = str(cp.get("time", "Not found"))
            self._hash = str(cp.get("hash", "Not found"))
            if not self._config_original or not self._model_state_dict:
                raise ValueError(f"{self.checkpoint_path} has no config or model weights")
            self._config = _config_cp_routine(self._config_original)
            self._loaded = True

    path = checkpoint_path(model)
    checkpoint = _SafeCheckpoint(path)
    config = checkpoint.config
    if config.get("readout_as_fcn", False) or config.get("use_bias_in_linear", False):
        raise NotImplementedError(f"{model!r}: the output head is not two bias-free linears")
    if config.get("use_modality", False):
        raise NotImplementedError(f"{model!r}: multi-fidelity models are not supported")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = checkpoint.build_model()
    net.set_is_batch_data(False)
    net.eval()
    return net, config, path
