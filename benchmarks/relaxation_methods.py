"""Relaxation methods compared (the paper's Table 1, Figs. 3 and 4).

Methods: VASP's own CG (the fake with ``IBRION = 2``), ASE BFGS and GPMin on the parent, warm start
(pre-trained surrogate alone, then parent + BFGS), the online learner with the paper's relax-only,
K-steps (k = 100) and uncertainty (5 ridge heads, 0.05 eV/A) querying, ``learner-fixed-radius`` (the
default until 2026-12: relax-only plus a fixed 0.5 A trust radius), the default learner (adaptive trust region with a
stall guard, forces matched at each segment's start plus a local GP while it predicts new parent
points better than the match alone, uphill rejection, tight finish), ``learner-start-match`` (the
default without the GP, the default until 2026-12-06) and the
segments learner (trust-region segments on the refit surrogate force-matched at each start and
corrected by a local GP, the refit fitting force changes, uphill segments rejected, a
model-checked finish; ``finetuna_core.trust_driver``), and ``learner-default-exact-prior``, a
measurement rather than a method: the default learner with the parent's own model as its prior
(the stand-in DFT's SevenNet model; on the EMT set, EMT), whose calls are the driver's floor.
``vasp-cg-previous`` in the results files is the fake's CG before its line search was fixed (kept,
not rerun). Metrics as in finetuna-facts section 3 (DFT calls relative to CG, mean and pooled;
accuracy = parent fmax <= 0.03 eV/A and E <= E_CG + 0.02 eV).

System sets:
* ``emt``: adsorbate-slab systems built with ASE for the EMT elements; parent = the fake VASP with
  EMT physics;
* ``oc20``: the ten OC20 systems of ../shared/benchmarks/oc20_finetuna (frame 0); parent = the fake
  VASP with a stand-in "DFT": SevenNet's 7net-l3i5 model, a different (larger, l=3) model from the
  surrogate, SevenNet-0. It is not DFT: the numbers say how the methods compare on a smooth,
  realistic potential energy surface, not how they do against VASP.
* ``generated``: the development set, 20 adsorbate-slab systems built with ASE (OC20-like elements and
  sizes, some placed off-site), on the stand-in DFT;
* ``held-out``: twenty more built the same way from another seed, on which no setting was chosen (not in
  the default ``--sets``: run it on purpose, with ``vasp-cg,bfgs,learner-default``);
* any directory of structures (``--structures DIR``, files ASE can read; FixAtoms kept).

Results are written after every system, and a rerun skips finished systems (``--fresh`` to redo).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from itertools import product
from pathlib import Path

import numpy as np

from benchmarks.common import MOCK_VASP, RESULTS, machine, prepare_environment, table
from finetuna_core.surrogates.base import FineTuneReport, Prediction, Surrogate

FMAX = 0.03
LEARNER_STEPS = 300  # optimizer steps on the learner before a run counts as not converged (paper's variants)
DEFAULT_LEARNER_STEPS = 1000  # the default's stall guard makes long surrogate runs cheap in parent calls
SEGMENTS_MODEL_STEPS = 20000  # model steps of the segments driver (all segments together)
# ASE's GPMin refits a Gaussian process over every point at each step, so its cost grows steeply with
# steps and atoms (measured: 377 s for 90 steps at 44 atoms, one thread). A runaway run stops after
# this much wall time and is reported as time-capped, left out of the ratios.
GPMIN_MAX_SECONDS = 600.0
ALL_METHODS = ("vasp-cg", "bfgs", "gpmin", "warm-start", "learner-relax-only", "learner-k-steps",
               "learner-uncertainty", "learner-fixed-radius", "learner-default", "learner-segments",
               "learner-default-exact-prior", "learner-start-match")
# The default learner whose prior is the stand-in DFT's own model: a perfect prior, so its calls are
# what the driver itself needs (its floor), apart from the prior's errors. Not a method for real DFT;
# only on the sets whose parent is a SevenNet stand-in.
EXACT_PRIOR = "learner-default-exact-prior"
STAND_IN = {"backend": "ase:sevenn.calculator.SevenNetCalculator",
            "backend_options": {"model": "7net-l3i5", "device": "cpu"}}


def emt_systems(count: int) -> dict:
    from ase.build import add_adsorbate, fcc100, fcc110, fcc111
    from ase.constraints import FixAtoms

    rng = np.random.default_rng(11)
    metals = ["Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Al"]
    facets = {"111": (fcc111, (3, 3, 3), ("fcc", "hcp", "ontop")), "100": (fcc100, (3, 3, 3), ("hollow", "bridge")),
              "110": (fcc110, (3, 2, 3), ("hollow", "longbridge"))}
    adsorbates = {"O": 1.3, "N": 1.3, "C": 1.3, "H": 1.0}
    systems = {}
    combos = list(product(metals, facets, adsorbates))
    order = rng.permutation(len(combos))
    for index in order[:count]:
        metal, facet, adsorbate = combos[index]
        build, size, sites = facets[facet]
        site = sites[int(rng.integers(len(sites)))]
        slab = build(metal, size, vacuum=7.0)
        add_adsorbate(slab, adsorbate, adsorbates[adsorbate], site)
        slab.positions[-1] += np.append(rng.normal(scale=0.25, size=2), 0.0)
        slab.pbc = True
        slab.set_constraint(FixAtoms(indices=[a.index for a in slab if a.tag >= 2]))
        systems[f"{adsorbate}-{metal}{facet}-{site}"] = slab
    return systems


def _fragment(name: str):
    """An adsorbate with its binding atom first (placed at the site), in a plausible geometry."""
    from ase import Atoms
    from ase.build import molecule

    shapes = {
        "O": Atoms("O", [(0, 0, 0)]), "H": Atoms("H", [(0, 0, 0)]), "N": Atoms("N", [(0, 0, 0)]),
        "C": Atoms("C", [(0, 0, 0)]),
        "OH": Atoms("OH", [(0, 0, 0), (0, 0, 0.97)]),
        "CO": Atoms("CO", [(0, 0, 0), (0, 0, 1.15)]),
        "NO": Atoms("NO", [(0, 0, 0), (0, 0, 1.17)]),
        "NH2": Atoms("NH2", [(0, 0, 0), (0.8, 0, 0.55), (-0.8, 0, 0.55)]),
        "CH3": Atoms("CH3", [(0, 0, 0), (1.03, 0, 0.36), (-0.51, 0.89, 0.36), (-0.51, -0.89, 0.36)]),
        "CHO": Atoms("CHO", [(0, 0, 0), (-0.9, 0, 0.6), (1.0, 0, 0.65)]),
        "OCH3": Atoms("OCH3", [(0, 0, 0), (0, 0, 1.42), (1.03, 0, 1.78), (-0.51, 0.89, 1.78), (-0.51, -0.89, 1.78)]),
    }
    if name == "H2O":
        water = molecule("H2O")
        water.positions -= water.positions[0]
        return water
    return shapes[name].copy()


def generated_systems(count: int = 20, seed: int = 2026) -> dict:
    """A development set built with ASE: OC20-like elements and sizes (37-60 atoms), four-layer slabs
    with the bottom two fixed, single metals and surface alloys, 12 adsorbates, some placed off-site.

    Names say what each system is; the same seed gives the same set. Relaxed on the stand-in DFT.
    """
    from ase.build import add_adsorbate, fcc100, fcc111
    from ase.constraints import FixAtoms

    rng = np.random.default_rng(seed)
    metals = ["Pt", "Pd", "Cu", "Ag", "Au", "Ni", "Rh", "Ir", "Co"]
    alloy_partners = ["Zn", "Sn", "Ga", "Fe", "Mo", "Al"]
    adsorbates = ["O", "H", "N", "C", "OH", "CO", "NO", "NH2", "CH3", "CHO", "OCH3", "H2O"]
    facets = {"111": (fcc111, ("fcc", "hcp", "ontop", "bridge")), "100": (fcc100, ("hollow", "bridge", "ontop"))}
    heights = {"ontop": 1.9, "bridge": 1.6}
    systems = {}
    while len(systems) < count:
        metal = metals[int(rng.integers(len(metals)))]
        facet = list(facets)[int(rng.integers(2))]
        build, sites = facets[facet]
        site = sites[int(rng.integers(len(sites)))]
        adsorbate = adsorbates[int(rng.integers(len(adsorbates)))]
        size = [(3, 3, 4), (4, 3, 4), (3, 4, 4)][int(rng.integers(3))]
        slab = build(metal, size, vacuum=8.0)
        label = metal
        if rng.random() < 0.4:  # a surface alloy: a quarter of the atoms swapped for a partner element
            partner = alloy_partners[int(rng.integers(len(alloy_partners)))]
            swap = rng.choice(len(slab), size=len(slab) // 4, replace=False)
            symbols = slab.get_chemical_symbols()
            for index in swap:
                symbols[index] = partner
            slab.set_chemical_symbols(symbols)
            label = f"{metal}3{partner}"
        add_adsorbate(slab, _fragment(adsorbate), heights.get(site, 1.3), site)
        off_site = rng.random() < 0.25
        if off_site:  # deliberately off the site: the adsorbate must find its way
            angle = rng.uniform(0, 2 * np.pi)
            count_ads = len(_fragment(adsorbate))
            slab.positions[-count_ads:, :2] += 0.8 * np.array([np.cos(angle), np.sin(angle)])
        slab.rattle(0.03, seed=int(rng.integers(1 << 30)))
        slab.pbc = True
        slab.set_constraint(FixAtoms(indices=[a.index for a in slab if a.tag >= 3]))
        name = f"{adsorbate}-{label}{facet}-{site}{'-off' if off_site else ''}-{len(slab)}"
        systems.setdefault(name, slab)
    return systems


HELD_OUT_SEED = 2027


def held_out_systems(count: int = 20) -> dict:
    """Systems built like the development set with another seed: never used to choose a setting.

    The default's settings were chosen on the EMT, OC20 and generated sets; this set checks that its
    accuracy and calls carry over to systems it was not tuned on. Run it with the methods that
    answer that (``vasp-cg``, ``bfgs``, ``learner-default``, and ``learner-relax-only`` for the paper's
    side), once per change of the default.
    """
    return generated_systems(count, seed=HELD_OUT_SEED)


def oc20_systems(directory: Path, names=None) -> dict:
    from ase.io import read

    systems = {}
    for path in sorted(directory.glob("*.traj"), key=lambda p: p.stat().st_size):
        if names and path.stem not in names:
            continue
        atoms = read(path, 0)
        atoms.calc = None
        systems[path.stem] = atoms
    return systems


def structure_systems(directory: Path) -> dict:
    from ase.io import read

    systems = {}
    for path in sorted(directory.iterdir()):
        try:
            atoms = read(path)
        except Exception:  # noqa: BLE001 - not a structure file
            continue
        atoms.calc = None
        atoms.pbc = True
        systems[path.stem] = atoms
    return systems


def kpoints_for(atoms) -> tuple[int, int, int]:
    a, b, _ = atoms.cell.lengths()
    return max(1, round(40 / a)), max(1, round(40 / b)), 1


def exact_prior_model(settings: dict) -> str | None:
    """The model the parent computes with: the stand-in DFT's SevenNet model, ``"emt"``, or None for other parents."""
    if settings.get("backend") == "emt":
        return "emt"
    if settings.get("backend") != STAND_IN["backend"]:
        return None
    return settings.get("backend_options", {}).get("model")


def applicable(method: str, settings: dict) -> bool:
    """Whether ``method`` can run on a set with this parent (the exact prior needs a SevenNet stand-in or EMT)."""
    return method != EXACT_PRIOR or exact_prior_model(settings) is not None


class FrozenEMT(Surrogate):
    """EMT as a surrogate that never learns: the EMT set's exact prior (a measurement, not a method)."""

    name = "frozen-emt"

    def predict(self, atoms) -> Prediction:
        from ase.calculators.emt import EMT

        work = atoms.copy()
        work.calc = EMT()
        return Prediction(energy=work.get_potential_energy(), forces=work.get_forces(apply_constraint=False))

    def fine_tune(self, points) -> FineTuneReport:
        return FineTuneReport("none", len(points), 0.0)

    def reset(self) -> None:
        pass

    def save(self, path) -> None:
        raise NotImplementedError("the frozen EMT prior has no state to save")

    @classmethod
    def load(cls, path) -> FrozenEMT:
        raise NotImplementedError("the frozen EMT prior has no state to load")


def surrogate_for(method: str, policy: str, settings: dict, surrogates: dict):
    """The surrogate a learner method starts from (the exact prior's is built once and kept in ``surrogates``)."""
    if method == EXACT_PRIOR:
        from finetuna_core.surrogates import make_surrogate

        model = exact_prior_model(settings)
        if model is None:
            raise ValueError(f"{EXACT_PRIOR} needs a parent running a SevenNet model or EMT, not {settings}")
        if f"exact:{model}" not in surrogates:
            surrogates[f"exact:{model}"] = FrozenEMT() if model == "emt" else make_surrogate("sevennet", model=model)
        return surrogates[f"exact:{model}"]
    return surrogates["ensemble" if policy == "uncertainty" else "single"]


def vasp_settings(atoms) -> dict:
    """The INCAR/KPOINTS settings every method's (fake) VASP runs with."""
    return {"xc": "PBE", "kpts": kpoints_for(atoms), "encut": 350, "ismear": 1, "sigma": 0.2, "ediff": 1e-4}


def run_method(method: str, atoms, workdir: Path, settings: dict, surrogates: dict) -> dict:
    from finetuna_core.learner import DEFAULT_TRUST_RADIUS, OnlineLearner
    from finetuna_core.relax import learner_setup, relax, relax_parent_only, relax_vasp_cg, relax_warm_start
    from vasp_interactive import VaspInteractive

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "mock_vasp.json").write_text(json.dumps(settings))
    vasp = vasp_settings(atoms)
    atoms = atoms.copy()
    if method == "vasp-cg":
        return relax_vasp_cg(atoms, str(workdir), MOCK_VASP, fmax=FMAX, nsw=400, **vasp).to_dict()
    with VaspInteractive(command=MOCK_VASP, directory=workdir, txt=None, **vasp) as parent:
        if method in ("bfgs", "gpmin"):
            cap = GPMIN_MAX_SECONDS if method == "gpmin" else None
            return relax_parent_only(atoms, parent, fmax=FMAX, optimizer=method, steps=400, max_seconds=cap).to_dict()
        if method == "warm-start":
            surrogates["single"].reset()
            return relax_warm_start(atoms, surrogates["single"], parent, fmax=FMAX, steps=400).to_dict()
        policy = "default" if method == EXACT_PRIOR else method.removeprefix("learner-")
        surrogate = surrogate_for(method, policy, settings, surrogates)
        surrogate.reset()
        if policy == "fixed-radius":  # the default until 2026-12: relax-only + a fixed 0.5 A radius
            setup = learner_setup("relax-only", fmax=FMAX, trust_radius=DEFAULT_TRUST_RADIUS)
        else:  # ours ("default") or the paper's variants as published
            setup = learner_setup(policy, fmax=FMAX, k=100, threshold=0.05)
        learner = OnlineLearner(parent, surrogate, setup.policy, settings=setup.settings)
        steps = {"default": DEFAULT_LEARNER_STEPS, "start-match": DEFAULT_LEARNER_STEPS,
                 "segments": SEGMENTS_MODEL_STEPS}.get(policy, LEARNER_STEPS)
        result = relax(atoms, learner, fmax=FMAX, steps=steps, max_parent_calls=150, guards=setup.guards,
                       driver=setup.driver)
        result.method = method
        data = result.to_dict()
        data["seconds_finetune"] = learner.summary()["seconds_finetune"]
        # model inference: the learner's own predictions plus the segments driver's and the finish probe's solves
        data["seconds_predict"] = (learner.summary()["seconds_predict"] + result.extra.get("seconds_segments", 0.0)
                                   + result.extra.get("seconds_probe", 0.0))
        data["seconds_probe"] = result.extra.get("seconds_probe", 0.0)
        data["seconds_parent"] = learner.summary()["seconds_parent"]
        data["seconds_precompute"] = float(sum(learner.precompute_seconds))
        return data


def figures(runs: dict, scores, prefix: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from finetuna_core.metrics import is_time_capped

    paths = []
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for score in scores:
        if score.method == "vasp-cg":
            continue
        ax.errorbar(score.ratio_mean, 100 * score.accuracy, xerr=score.ratio_sem if np.isfinite(score.ratio_sem)
                    else None, fmt="o", capsize=3, label=score.method)
    ax.axhline(100, color="grey", lw=0.5)
    ax.set_xlabel("DFT calls / VASP CG (mean over systems)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"accuracy vs speed ({prefix})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = RESULTS / f"relaxation_{prefix}_accuracy_speed.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    paths.append(path.name)

    systems = list(runs)
    methods = [m for m in ALL_METHODS if any(m in runs[s] for s in systems)]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, 0.45 * len(systems) + 3), 6.5), sharex=True)
    width = 0.8 / max(1, len(methods))

    def finished(system: str, method: str) -> bool:
        return method in runs[system] and not is_time_capped(runs[system][method])

    for k, method in enumerate(methods):
        x = np.arange(len(systems)) + k * width
        calls = [runs[s][method]["parent_calls"] if finished(s, method) else np.nan for s in systems]
        top.bar(x, calls, width, label=method)
        if method != "vasp-cg":
            delta = [runs[s][method]["energy"] - runs[s]["vasp-cg"]["energy"]
                     if finished(s, method) and "vasp-cg" in runs[s] else np.nan for s in systems]
            bottom.scatter(x, delta, s=12, label=method)
    top.set_ylabel("DFT calls")
    top.legend(fontsize=6, ncol=2)
    bottom.axhline(0.02, color="red", lw=0.6, ls="--")
    bottom.axhline(0.0, color="grey", lw=0.5)
    bottom.set_ylabel("E - E_CG (eV)")
    bottom.set_xticks(np.arange(len(systems)) + 0.4)
    bottom.set_xticklabels(systems, rotation=70, fontsize=6)
    fig.tight_layout()
    path = RESULTS / f"relaxation_{prefix}_per_system.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    paths.append(path.name)
    return paths


def run_set(label: str, systems: dict, settings: dict, methods, surrogates: dict, fresh: bool,
            report_only: bool = False) -> dict:
    from finetuna_core.metrics import score_all

    out = RESULTS / f"relaxation_{label}.json"
    methods = tuple(m for m in methods if applicable(m, settings))
    previous = json.loads(out.read_text()) if out.exists() and not fresh else {}
    runs = previous.get("runs", {})  # finished (system, method) runs are kept whatever is asked now
    # with --fresh the rows on disk now are stale: only a row written from now on (by this process or a
    # parallel one; every save takes in the file's rows) counts as finished
    stale = _on_disk(out).get("runs", {}) if fresh else {}

    def finished_run(name: str, method: str, row: dict | None) -> bool:
        return row is not None and row != stale.get(name, {}).get(method)

    done = sum(all(m in runs.get(name, {}) for m in methods) for name in systems)
    print(f"\n{label}: {len(systems)} systems x {len(methods)} methods "
          f"({done} systems already done, rerun with --fresh to redo)", flush=True)
    try:
        from tqdm import tqdm

        progress = tqdm(total=len(systems) * len(methods), desc=label, unit="run")
    except ImportError:
        progress = None
    if report_only:  # score what earlier (possibly interrupted) runs finished; each method on its systems
        runs = {name: result for name, result in runs.items() if "vasp-cg" in result}
        systems = {}
    ran = False  # whether this process added a run (else the file keeps the machine it names)
    for name, atoms in systems.items():
        finished = runs.setdefault(name, {})
        missing = [m for m in methods if not finished_run(name, m, finished.get(m))]
        if progress:
            progress.update(len(methods) - len(missing))
        if not missing:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            for method in missing:
                elsewhere = _saved_run(out, name, method)
                if finished_run(name, method, elsewhere):
                    # a parallel benchmark process finished it meanwhile
                    runs[name][method] = elsewhere
                    if progress:
                        progress.update(1)
                    continue
                started = time.perf_counter()
                try:
                    runs[name][method] = run_method(method, atoms, Path(tmp) / method, settings, surrogates)
                except Exception as error:  # noqa: BLE001 - one failure must not stop the benchmark
                    runs[name][method] = {"method": method, "error": f"{type(error).__name__}: {error}",
                                          "parent_calls": float("nan"), "energy": float("nan"),
                                          "fmax": float("nan")}
                runs[name][method]["wall_seconds"] = time.perf_counter() - started
                ran = True
                if progress:
                    progress.update(1)
                _save(out, label, methods, runs, settings, len(atoms))  # an interruption loses one run
    if progress:
        progress.close()
    scores = score_all(runs, baseline="vasp-cg")
    rows = [{"method": s.method, "systems": s.systems, "ratio_mean": s.ratio_mean, "ratio_sem": s.ratio_sem,
             "ratio_pooled": s.ratio_pooled, "accuracy": s.accuracy, "time_capped": s.time_capped,
             "baseline_capped": ",".join(s.baseline_capped)} for s in scores]
    print(table(rows, [("method", "method"), ("systems", "systems"), ("ratio_mean", "calls/CG mean"),
                       ("ratio_sem", "sem"), ("ratio_pooled", "pooled"), ("accuracy", "accuracy"),
                       ("time_capped", "time-capped"), ("baseline_capped", "CG not converged")]))
    pictures = figures(runs, scores, label)
    payload = _save(out, label, methods, runs, settings, None, rows, pictures, new_runs=ran)
    return payload


def _on_disk(path: Path) -> dict:
    """The results file as it is now (another process may be writing it); {} when unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _saved_run(path: Path, name: str, method: str) -> dict | None:
    return _on_disk(path).get("runs", {}).get(name, {}).get(method)


def _save(path: Path, label, methods, runs, settings, _natoms, rows=None, pictures=None,
          new_runs: bool = True) -> dict:
    """Write the results, first taking in runs another benchmark process saved meanwhile.

    Runs of different methods can then go in parallel processes (one per core) on one file.
    Without ``new_runs`` (a rescoring) the file keeps the machine and date of its last run.
    """
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        disk = _on_disk(path)
        for name, by_method in disk.get("runs", {}).items():
            for method, result in by_method.items():
                runs.setdefault(name, {}).setdefault(method, result)
        where = machine() if new_runs or "machine" not in disk else disk["machine"]
        payload = {"benchmark": f"relaxation_{label}", "machine": where, "methods": list(methods),
                   "fmax": FMAX, "parent_settings": settings, "runs": runs}
        if rows is not None:
            payload["scores"] = rows
            payload["figures"] = pictures
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(payload, indent=1, default=float))
        temporary.replace(path)
    return payload


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 EMT + 1 OC20 systems")
    parser.add_argument("--sets", default="emt,oc20,generated",
                        help="comma list of emt, oc20, generated, held-out (not in the default: run it on purpose)")
    parser.add_argument("--structures", type=Path, help="also run every structure file in this directory")
    parser.add_argument("--oc20", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "benchmarks"
                        / "oc20_finetuna")
    parser.add_argument("--methods", default=",".join(ALL_METHODS))
    parser.add_argument("--fresh", action="store_true", help="ignore finished systems in earlier results")
    parser.add_argument("--systems", default="", help="comma list of system names to run (default: all)")
    parser.add_argument("--report-only", action="store_true",
                        help="score and plot the systems finished by earlier (possibly interrupted) runs")
    args = parser.parse_args(argv)
    prepare_environment()
    warnings.filterwarnings("ignore")
    from finetuna_core.surrogates import make_surrogate

    methods = tuple(m for m in args.methods.split(",") if m)
    unknown = set(methods) - set(ALL_METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {', '.join(ALL_METHODS)}")
    surrogates = {"single": make_surrogate("sevennet"), "ensemble": make_surrogate("sevennet", ensemble_size=5)}
    if not args.quick:
        print("full run: 24 EMT systems and 10 OC20 systems with every method; expect a few hours on 2 cores")
    results = {}
    sets = args.sets.split(",")
    wanted = {name for name in args.systems.split(",") if name}

    def chosen(systems: dict) -> dict:
        return {name: atoms for name, atoms in systems.items() if not wanted or name in wanted}

    if "emt" in sets:
        results["emt"] = run_set("emt", chosen(emt_systems(3 if args.quick else 24)), {"backend": "emt"}, methods,
                                 surrogates, args.fresh, args.report_only)
    if "generated" in sets:
        results["generated"] = run_set("generated", chosen(generated_systems(2 if args.quick else 20)), STAND_IN,
                                       methods, surrogates, args.fresh, args.report_only)
    if "held-out" in sets:
        results["held-out"] = run_set("held-out", chosen(held_out_systems(2 if args.quick else 20)), STAND_IN,
                                      methods, surrogates, args.fresh, args.report_only)
    if "oc20" in sets:
        if args.oc20.is_dir():
            names = ["random1447590"] if args.quick else None
            results["oc20"] = run_set("oc20", chosen(oc20_systems(args.oc20, names)), STAND_IN, methods, surrogates,
                                      args.fresh, args.report_only)
        else:
            print(f"OC20 systems not found at {args.oc20}: skipped")
    if args.structures:
        results["custom"] = run_set("custom", chosen(structure_systems(args.structures)), {"backend": "emt"}, methods,
                                    surrogates, args.fresh)
    return results


if __name__ == "__main__":
    main()
