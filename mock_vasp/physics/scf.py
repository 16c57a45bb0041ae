"""The electronic self-consistency model of the fake VASP.

The number of electronic steps comes out of an iterative computation, not a table. The
electronic state is a vector z = (x, D): x are bond charges (N values, the part of the density
that self-consistency has to find) and D are misplacements of the atom-centred part of the
density (3N values, in units of an orbital width). Orbitals psi live in the same space, as the
density they produce. One electronic step does what VASP's does:

1. Davidson (or RMM-DIIS) brings the orbitals a fraction ``theta`` closer to the eigenstates of
   the Hamiltonian of the input density, ``T(z) = (x - w g(x), f_D D)`` with ``g = P(Hx + chi)``
   (H: a charge-equilibration hardness matrix built from the geometry, chi: electronegativities,
   P: projection keeping the electron count);
2. unless in the non-self-consistent start (NELMDL), Pulay mixing builds the next input density
   from the history of inputs and residuals ``psi - z``.

The energy printed is the converged energy of the physics backend plus a second-order error,
``1/2 dx^T H dx + 1/2 k_D |D|^2 + 1/2 k_psi |psi - T(z)|^2``. The run stops when both the energy
change and the band-energy change are below EDIFF (after NELMIN steps), or at NELM.

Where the iteration starts is what distinguishes the three ways of running VASP:
cold (``ISTART = 0``: atomic charges, random orbitals), a wavefunction file (``ISTART = 1``:
converged state of old positions, orbitals and their density left at the old atomic sites) and
the in-memory extrapolation of interactive mode (``IWAVPR = 11``: atomic part of the density moved
with the atoms, bond charges extrapolated from the last three steps).
See ``mock_vasp/README.md`` for the parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..mpi import Comm

# Pauling electronegativities; elements not listed use 1.8.
_ELECTRONEGATIVITY = {
    "H": 2.20, "Li": 0.98, "Be": 1.57, "B": 2.04, "C": 2.55, "N": 3.04, "O": 3.44, "F": 3.98,
    "Na": 0.93, "Mg": 1.31, "Al": 1.61, "Si": 1.90, "P": 2.19, "S": 2.58, "Cl": 3.16,
    "K": 0.82, "Ca": 1.00, "Sc": 1.36, "Ti": 1.54, "V": 1.63, "Cr": 1.66, "Mn": 1.55,
    "Fe": 1.83, "Co": 1.88, "Ni": 1.91, "Cu": 1.90, "Zn": 1.65, "Ga": 1.81, "Ge": 2.01,
    "As": 2.18, "Se": 2.55, "Br": 2.96, "Rb": 0.82, "Sr": 0.95, "Y": 1.22, "Zr": 1.33,
    "Nb": 1.60, "Mo": 2.16, "Tc": 1.90, "Ru": 2.20, "Rh": 2.28, "Pd": 2.20, "Ag": 1.93,
    "Cd": 1.69, "In": 1.78, "Sn": 1.96, "Sb": 2.05, "Te": 2.10, "I": 2.66, "Cs": 0.79,
    "Ba": 0.89, "La": 1.10, "Hf": 1.30, "Ta": 1.50, "W": 2.36, "Re": 1.90, "Os": 2.20,
    "Ir": 2.20, "Pt": 2.28, "Au": 2.54, "Hg": 2.00, "Tl": 1.62, "Pb": 2.33, "Bi": 2.02,
}

KERNEL_WIDTH = 2.5  # Angstrom, Gaussian coupling between atomic sites
KERNEL_CUTOFF = 7.5  # Angstrom
COUPLING = 3.0  # eV per unit kernel overlap, off-diagonal hardness
CN_SHIFT = 0.3  # eV per neighbour, environment dependence of the electronegativity
ORBITAL_WIDTH = 0.6  # Angstrom, displacement that fully misplaces an atom-centred orbital
K_SITE = 2.0  # eV, energy of a unit misplacement of an isolated atomic density
K_ORBITAL = 2.0  # eV, energy of a unit orbital residual
RANDOM_ORBITAL_SCALE = 1.0  # size of INIWAV = 1 random orbitals


def electronegativity(symbol: str) -> float:
    return _ELECTRONEGATIVITY.get(symbol, 1.8)


@dataclass
class ScfParams:
    """INCAR tags that control the electronic loop."""

    ediff: float = 1e-4
    nelm: int = 60
    nelmin: int = 2
    nelmdl: int = 0
    amix: float = 0.4
    maxmix: int = 45
    algo: str = "Normal"  # Normal (DAV), Fast (DAV then RMM), VeryFast (RMM)
    nbands: int = 8
    nkpts: int = 1
    noise: float = 0.0  # fault switch: random density kicks that keep the loop from converging


@dataclass
class ScfLine:
    """One electronic step as VASP prints it."""

    algorithm: str  # "DAV" or "RMM"
    index: int
    energy: float
    de: float
    deps: float
    ncg: int
    rms: float
    rms_charge: float | None
    density_updated: bool


@dataclass
class ScfOutcome:
    iterations: int
    converged: bool
    excess_energy: float
    lines: list[ScfLine] = field(default_factory=list)


class PairCache:
    """Neighbour pairs within the kernel cutoff, rebuilt only when atoms moved more than skin/2.

    Interactive steps move atoms by hundredths of an Angstrom: the pair list (with periodic
    image shifts) is reused and only the distances are recomputed, which keeps the model cheap.
    """

    def __init__(self, skin: float = 1.0):
        self.skin = skin
        self._key: tuple | None = None
        self._reference: np.ndarray | None = None
        self._i = self._j = self._shift = None

    def pairs(self, symbols: list[str], cartesian: np.ndarray, lattice: np.ndarray, pbc=True):
        key = (len(symbols), tuple(np.round(lattice, 10).ravel()))
        moved = np.inf if self._reference is None or key != self._key else \
            float(np.linalg.norm(cartesian - self._reference, axis=1).max(initial=0.0))
        if moved > 0.5 * self.skin:
            from ase import Atoms
            from ase.neighborlist import neighbor_list

            atoms = Atoms(symbols=symbols, positions=cartesian, cell=lattice, pbc=pbc)
            self._i, self._j, self._shift = neighbor_list("ijS", atoms, KERNEL_CUTOFF + self.skin)
            self._shift = self._shift @ lattice
            self._key, self._reference = key, cartesian.copy()
        distance = np.linalg.norm(cartesian[self._j] - cartesian[self._i] + self._shift, axis=1)
        inside = distance < KERNEL_CUTOFF
        return self._i[inside], self._j[inside], distance[inside]


class Geometry:
    """The geometry-dependent Hamiltonian of the model: hardness matrix and electronegativities."""

    def __init__(self, symbols: list[str], cartesian: np.ndarray, lattice: np.ndarray, pbc=True,
                 cache: PairCache | None = None):
        n = len(symbols)
        i, j, d = (cache or PairCache()).pairs(symbols, cartesian, lattice, pbc)
        kernel = np.zeros((n, n))
        np.add.at(kernel, (i, j), np.exp(-0.5 * (d / KERNEL_WIDTH) ** 2))
        coordination = kernel.sum(axis=1)
        kernel[np.diag_indices(n)] += 1.0
        chi0 = np.array([electronegativity(s) for s in symbols])
        self.n = n
        self.hardness = np.diag(4.0 + 2.0 * chi0) + COUPLING * kernel
        self.chi = 2.0 * chi0 - CN_SHIFT * coordination
        self.step = 1.0 / np.abs(self.hardness).sum(axis=1).max()  # stable response (Gershgorin)

    def ground_state(self, charge: float = 0.0) -> np.ndarray:
        """Bond charges minimising 1/2 q^T H q + chi^T q with sum(q) = charge."""
        h_chi, h_one = np.linalg.solve(self.hardness, np.column_stack([self.chi, np.ones(self.n)])).T
        mu = (charge + h_chi.sum()) / h_one.sum()
        return mu * h_one - h_chi


@dataclass
class StartGuess:
    """Where the electronic loop starts: input density and orbitals, each (x, D)."""

    x: np.ndarray
    d: np.ndarray
    psi_x: np.ndarray
    psi_d: np.ndarray
    label: str


class ScfSolver:
    """Runs the electronic loop for one geometry; every MPI rank takes part in every step."""

    def __init__(self, geometry: Geometry, params: ScfParams, comm: Comm, charge: float = 0.0):
        self.geometry = geometry
        self.params = params
        self.comm = comm
        self.charge = charge
        self.q_star = geometry.ground_state(charge)
        rows = np.array_split(np.arange(geometry.n), comm.size)
        self._rows = rows[comm.rank]
        self._local_hardness = geometry.hardness[self._rows]
        self._site_scale = K_SITE / float(np.mean(np.diag(geometry.hardness)))
        self._rng = np.random.default_rng(20240611)

    def _hardness_times(self, vector: np.ndarray) -> np.ndarray:
        """H @ vector, each rank computing its block of rows."""
        return self.comm.allgather_concat(self._local_hardness @ vector)

    def _target(self, x: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Output density of the Hamiltonian built from the input (x, D): one response step.

        Misplaced atomic densities are multipoles; they are screened through the same
        hardness matrix as the bond charges, so both relax with the same (slow) modes.
        """
        both = self._hardness_times(np.column_stack([x, d]))
        gradient = both[:, 0] + self.geometry.chi
        gradient -= gradient.mean()
        return x - self.geometry.step * gradient, d - self.geometry.step * both[:, 1:], both[:, 0]

    def _energies(self, x, d, psi_x, psi_d, target_x, target_d) -> tuple[float, float]:
        dx = x - self.q_star
        hx = self._hardness_times(np.column_stack([dx, d]))
        density = 0.5 * float(dx @ hx[:, 0]) + 0.5 * self._site_scale * float(np.sum(d * hx[:, 1:]))
        orbital = 0.5 * K_ORBITAL * float(np.sum((psi_x - target_x) ** 2) + np.sum((psi_d - target_d) ** 2))
        return density, orbital

    def run(self, guess: StartGuess, on_line: Callable[[ScfLine], bool] | None = None,
            work: Callable[[], None] | None = None) -> ScfOutcome:
        """Iterate until converged or NELM; ``on_line`` returning True aborts (STOPCAR LABORT)."""
        p = self.params
        x, d = guess.x.copy(), guess.d.copy()
        psi_x, psi_d = guess.psi_x.copy(), guess.psi_d.copy()
        target_x, target_d, _ = self._target(x, d)
        previous_energy = previous_band = 0.0
        history_in: list[np.ndarray] = []
        history_res: list[np.ndarray] = []
        outcome = ScfOutcome(0, False, 0.0)
        non_sc_steps = abs(p.nelmdl)
        for step in range(1, p.nelm + 1):
            if work is not None:
                work()
            rmm = p.algo == "VeryFast" or (p.algo == "Fast" and step > max(non_sc_steps, 1))
            theta = 0.55 if rmm else 0.7
            # 1. eigensolver: orbitals move towards the eigenstates of the input density's Hamiltonian
            psi_x = psi_x + theta * (target_x - psi_x)
            psi_d = psi_d + theta * (target_d - psi_d)
            rms = math.sqrt((np.sum((psi_x - target_x) ** 2) + np.sum((psi_d - target_d) ** 2)) / (4 * len(x)))
            density, orbital = self._energies(x, d, psi_x, psi_d, target_x, target_d)
            energy = density + orbital
            band = orbital + 0.5 * density
            de = energy - previous_energy if step > 1 else energy
            deps = band - previous_band if step > 1 else band
            previous_energy, previous_band = energy, band
            # 2. mixing: Pulay over the history of input densities and their residuals. As in VASP,
            # the density is first mixed after the last non-selfconsistent step (NELMDL = -5: after
            # the 5th line), and not after the line that converged: that line has no rms(c) column.
            mixing = step >= non_sc_steps
            converged = mixing and step >= p.nelmin and abs(de) < p.ediff and abs(deps) < p.ediff
            rms_charge = None
            if mixing and not converged:
                z_in = np.concatenate([x, d.ravel()])
                residual = np.concatenate([target_x, target_d.ravel()]) - z_in
                rms_charge = float(np.linalg.norm(residual) / math.sqrt(len(residual)))
                history_in.append(z_in)
                history_res.append(residual)
                del history_in[: -p.maxmix], history_res[: -p.maxmix]
                z_new = _pulay(history_in, history_res, p.amix)
                if p.noise:
                    z_new = z_new + p.noise * self._rng.standard_normal(z_new.shape)
                x = z_new[: len(x)]
                x = x - (x.sum() - self.charge) / len(x)
                d = z_new[len(x):].reshape(d.shape)
                target_x, target_d, _ = self._target(x, d)
            ncg = p.nkpts * p.nbands * (1 if rmm else 2) + (p.nbands if step == 1 else 0)
            line = ScfLine("RMM" if rmm else "DAV", step, energy, de, deps, ncg, rms, rms_charge, mixing)
            outcome.lines.append(line)
            outcome.iterations = step
            outcome.excess_energy = energy
            abort = on_line(line) if on_line is not None else False
            if converged:
                outcome.converged = True
                break
            if abort:
                break
        return outcome


def _pulay(inputs: list[np.ndarray], residuals: list[np.ndarray], alpha: float) -> np.ndarray:
    """Pulay (DIIS) mixing: the combination of past inputs whose residual is smallest."""
    m = len(inputs)
    if m == 1:
        return inputs[0] + alpha * residuals[0]
    r = np.array(residuals)
    overlap = r @ r.T
    system = np.zeros((m + 1, m + 1))
    system[:m, :m] = overlap + 1e-12 * np.trace(overlap) / m * np.eye(m)
    system[m, :m] = system[:m, m] = 1.0
    rhs = np.zeros(m + 1)
    rhs[m] = 1.0
    try:
        coefficients = np.linalg.solve(system, rhs)[:m]
    except np.linalg.LinAlgError:
        coefficients = np.zeros(m)
    if not np.all(np.isfinite(coefficients)) or np.abs(coefficients).max() > 1e3:
        coefficients = np.zeros(m)  # ill-conditioned history: plain mixing from the newest input
        coefficients[-1] = 1.0
    return coefficients @ (np.array(inputs) + alpha * r)


def cold_start(n: int, seed: int = 7) -> StartGuess:
    """ISTART = 0, ICHARG = 2, INIWAV = 1: atomic charges, random orbitals."""
    rng = np.random.default_rng(seed)
    return StartGuess(
        x=np.zeros(n),
        d=np.zeros((n, 3)),
        psi_x=RANDOM_ORBITAL_SCALE * rng.standard_normal(n),
        psi_d=RANDOM_ORBITAL_SCALE * rng.standard_normal((n, 3)),
        label="cold",
    )


def displacement(old_frac: np.ndarray, new_frac: np.ndarray, lattice: np.ndarray) -> np.ndarray:
    """Cartesian displacement (minimum image), in units of the orbital width."""
    delta = new_frac - old_frac
    delta -= np.round(delta)
    return (delta @ lattice) / ORBITAL_WIDTH


def wavefunction_start(saved_q: np.ndarray, saved_frac: np.ndarray, frac: np.ndarray,
                       lattice: np.ndarray) -> StartGuess:
    """ISTART = 1: orbitals of the old geometry, and the density they make, at the old sites."""
    misplaced = displacement(saved_frac, frac, lattice)
    return StartGuess(saved_q.copy(), misplaced, saved_q.copy(), misplaced.copy(), "wavecar")


def extrapolation_coefficients(history_frac: list[np.ndarray], frac: np.ndarray,
                               lattice: np.ndarray) -> tuple[float, float]:
    """VASP's (alpha, beta) fit: R_new ~ R1 + alpha (R1 - R2) + beta (R2 - R3)."""
    if len(history_frac) < 2:
        return 0.0, 0.0

    def step(a, b):
        delta = a - b
        return ((delta - np.round(delta)) @ lattice).ravel()

    target = step(frac, history_frac[-1])
    first = step(history_frac[-1], history_frac[-2])
    if len(history_frac) < 3:
        norm = first @ first
        return (float(first @ target / norm) if norm > 1e-12 else 0.0), 0.0
    second = step(history_frac[-2], history_frac[-3])
    basis = np.stack([first, second], axis=1)
    coefficients, *_ = np.linalg.lstsq(basis, target, rcond=None)
    return float(coefficients[0]), float(coefficients[1])


def extrapolated_start(history_q: list[np.ndarray], history_frac: list[np.ndarray], frac: np.ndarray,
                       lattice: np.ndarray, iwavpr: int) -> StartGuess:
    """In-memory start of the next ionic step (IWAVPR 1/11: charge, 2/12: orbitals, 3/13: both).

    When the fitted extrapolation would predict the new positions worse than not extrapolating
    (a line search jumping back and forth), the previous step is used as it is.
    """
    alpha, beta = extrapolation_coefficients(history_frac, frac, lattice)
    mode = iwavpr % 10
    q = history_q[-1].copy()
    predicted_frac = history_frac[-1].copy()
    if len(history_q) >= 2 and mode in (1, 2, 3):
        q = q + alpha * (history_q[-1] - history_q[-2])
        predicted_frac = predicted_frac + alpha * _wrapped(history_frac[-1] - history_frac[-2])
    if len(history_q) >= 3 and mode in (1, 2, 3):
        q = q + beta * (history_q[-2] - history_q[-3])
        predicted_frac = predicted_frac + beta * _wrapped(history_frac[-2] - history_frac[-3])
    moved = displacement(history_frac[-1], frac, lattice)
    residual = displacement(predicted_frac, frac, lattice)
    if np.linalg.norm(residual) > np.linalg.norm(moved):
        q, residual = history_q[-1].copy(), moved
    orbitals_off = residual if mode in (2, 3) else moved
    density_off = np.zeros_like(moved) if mode in (1, 3) else orbitals_off.copy()
    return StartGuess(q, density_off, q.copy(), orbitals_off, "extrapolated")


def _wrapped(delta: np.ndarray) -> np.ndarray:
    return delta - np.round(delta)
