"""Drive VASP as a long-lived interactive process from ASE.

``VaspInteractive`` keeps one VASP alive across ionic steps, pauses its MPI ranks while Python
works, restarts it when it must and stops it cleanly, leaving no process behind.
"""

from .calculator import VaspInteractive
from .errors import (
    MlStepRefused,
    RestartRefused,
    SilenceTimeout,
    StartupTimeout,
    StepTimeout,
    VaspCrashed,
    VaspError,
    VaspExited,
    VaspOutputIncomplete,
    VaspProtocolError,
    VaspSetupError,
    VaspTimeout,
)
from .settings import InteractiveSettings, PauseSettings, RestartPolicy, Timeouts

__all__ = [
    "VaspInteractive",
    "InteractiveSettings",
    "PauseSettings",
    "RestartPolicy",
    "Timeouts",
    "VaspError",
    "VaspSetupError",
    "VaspExited",
    "VaspCrashed",
    "VaspTimeout",
    "StartupTimeout",
    "StepTimeout",
    "SilenceTimeout",
    "VaspProtocolError",
    "VaspOutputIncomplete",
    "RestartRefused",
    "MlStepRefused",
]
__version__ = "0.1.0"
