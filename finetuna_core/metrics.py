"""Comparing relaxation methods (finetuna-facts section 3).

* speed: DFT calls of a method divided by those of the baseline on the same system; the mean over
  systems and the pooled ratio (sum over sum) are both reported, since they differ;
* accuracy: the fraction of systems whose final point has parent fmax <= 0.03 eV/A (free atoms) and
  parent energy <= E_baseline + 0.02 eV (one-sided: a lower minimum counts as success).
* a system whose baseline run did not converge (its step cap, an error) is left out of every
  method's score and listed in ``baseline_capped``: scoring against it would call anything accurate.

Runs are plain mappings ``{system: {method: result}}`` where a result is a :class:`RelaxResult`
or a dict with ``parent_calls``, ``energy`` and ``fmax``, so finished runs from disk work too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


def _get(result: Any, key: str) -> float:
    return float(result[key] if isinstance(result, Mapping) else getattr(result, key))


def baseline_unusable(result: Any) -> bool:
    """A baseline run that did not converge (it hit its step cap, or failed): nothing to score against."""
    if isinstance(result, Mapping):
        status, error = result.get("status"), result.get("error")
    else:
        status, error = getattr(result, "status", None), None
    return error is not None or (status is not None and status != "converged")


def is_time_capped(result: Any) -> bool:
    """A run stopped by a wall-time cap: its call count and end point are truncated."""
    status = result.get("status") if isinstance(result, Mapping) else getattr(result, "status", None)
    return status == "time-cap"


@dataclass(frozen=True)
class MethodScore:
    method: str
    systems: int
    ratio_mean: float
    ratio_sem: float  # standard error of the mean
    ratio_pooled: float
    accuracy: float
    ratios: dict[str, float]
    successes: dict[str, bool]
    time_capped: int = 0  # runs stopped by a wall-time cap: left out (their call counts are truncated)
    baseline_capped: tuple[str, ...] = ()  # systems left out: the baseline itself did not converge


def is_accurate(result: Any, baseline: Any, fmax: float = 0.03, energy_tolerance: float = 0.02) -> bool:
    return _get(result, "fmax") <= fmax and _get(result, "energy") <= _get(baseline, "energy") + energy_tolerance


def score(runs: Mapping[str, Mapping[str, Any]], method: str, baseline: str = "vasp-cg", fmax: float = 0.03,
          energy_tolerance: float = 0.02) -> MethodScore:
    """Speed and accuracy of ``method`` against ``baseline`` over the systems that have both."""
    ratios: dict[str, float] = {}
    successes: dict[str, bool] = {}
    method_calls = baseline_calls = 0.0
    time_capped = 0
    baseline_capped: list[str] = []
    for system, results in runs.items():
        if method not in results or baseline not in results:
            continue
        if baseline_unusable(results[baseline]):
            baseline_capped.append(system)
            continue
        if is_time_capped(results[method]):
            time_capped += 1
            continue
        calls, reference = _get(results[method], "parent_calls"), _get(results[baseline], "parent_calls")
        ratios[system] = calls / reference
        method_calls += calls
        baseline_calls += reference
        successes[system] = is_accurate(results[method], results[baseline], fmax, energy_tolerance)
    values = np.array(list(ratios.values()))
    count = len(values)
    return MethodScore(
        method=method,
        systems=count,
        ratio_mean=float(values.mean()) if count else float("nan"),
        ratio_sem=float(values.std(ddof=1) / np.sqrt(count)) if count > 1 else float("nan"),
        ratio_pooled=method_calls / baseline_calls if baseline_calls else float("nan"),
        accuracy=float(np.mean(list(successes.values()))) if successes else float("nan"),
        ratios=ratios,
        successes=successes,
        time_capped=time_capped,
        baseline_capped=tuple(baseline_capped),
    )


def score_all(runs: Mapping[str, Mapping[str, Any]], baseline: str = "vasp-cg", **kwargs) -> list[MethodScore]:
    methods = sorted({m for results in runs.values() for m in results})
    return [score(runs, m, baseline, **kwargs) for m in methods]
