"""The i-PI client mode end to end: ASE's SocketIOCalculator as the server, ``vasp-interactive ipi`` as
the client driving the fake VASP, over a UNIX socket and over TCP on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import uuid

import numpy as np
import psutil
import pytest
from ase.calculators.socketio import SocketIOCalculator
from ase.io import write
from ase.optimize import BFGS
from conftest import BIN, MOCK_VASP, mock_processes
from helpers import co_on_cu, wait_for

from vasp_interactive import VaspInteractive

CLIENT = str(BIN / "vasp-interactive")
INCAR = "ENCUT = 300\nEDIFF = 1E-6 ; ISMEAR = 1  # tags as a user writes them\nSIGMA = 0.2\n"
DIRECT = dict(xc="PBE", kpts=(1, 1, 1), encut=300, ediff=1e-6, ismear=1, sigma=0.2)


@pytest.fixture
def socket_name():
    """A unique UNIX socket name; its file (/tmp/ipi_NAME) is removed afterwards, also when a killed
    server could not remove it itself."""
    name = f"vi-{uuid.uuid4().hex[:8]}"
    yield name
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"/tmp/ipi_{name}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def vasp_of(run) -> list[psutil.Process]:
    found = []
    for process in mock_processes():
        try:
            if process.cwd() == str(run):
                found.append(process)
        except psutil.Error:
            continue
    return found


def client_launcher(run, clients: list):
    def launch(atoms, properties, port, unixsocket):
        where = ["--unix", unixsocket] if unixsocket else ["--port", str(port), "--host", "127.0.0.1"]
        process = subprocess.Popen([CLIENT, "ipi", "--directory", str(run), "--command", MOCK_VASP, *where],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        clients.append(process)
        return process
    return launch


def prepare(tmp_path):
    run = tmp_path / "client"
    run.mkdir()
    atoms = co_on_cu()
    write(run / "POSCAR", atoms, format="vasp", direct=True)
    (run / "INCAR").write_text(INCAR)
    return run, atoms


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_bfgs_through_ipi_equals_the_direct_calculator(tmp_path, transport, socket_name):
    run, atoms = prepare(tmp_path)
    reference = atoms.copy()
    with VaspInteractive(command=MOCK_VASP, directory=tmp_path / "direct", **DIRECT) as direct:
        reference.calc = direct
        direct_opt = BFGS(reference, logfile=None)
        direct_opt.run(fmax=0.03, steps=100)
        direct_energy = reference.get_potential_energy()

    clients: list[subprocess.Popen] = []
    where = {"unixsocket": socket_name} if transport == "unix" else {"port": free_port()}
    paused_between = []
    server = SocketIOCalculator(launch_client=client_launcher(run, clients), timeout=120, **where)
    atoms.calc = server

    def vasp_waits_stopped():  # between requests the client has paused VASP: every rank in state T
        ranks = vasp_of(run)
        paused_between.append(wait_for(lambda: ranks and all(p.status() == psutil.STATUS_STOPPED for p in ranks),
                                       5.0))

    opt = BFGS(atoms, logfile=None)
    opt.attach(vasp_waits_stopped)
    opt.run(fmax=0.03, steps=100)
    energy = atoms.get_potential_energy()
    server.close()  # ASE's server just closes its socket: the client must take that as the end
    client = clients[0]
    out, err = client.communicate(timeout=60)
    assert client.returncode == 0, err
    assert f"served {opt.nsteps + 1} structures" in out
    assert opt.nsteps == direct_opt.nsteps
    assert energy == pytest.approx(direct_energy, abs=1e-6)
    assert np.allclose(atoms.positions, reference.positions, atol=1e-5)
    assert len(paused_between) >= 3 and all(paused_between)
    assert "writing wavefunctions" in (run / "vasp.out").read_text()  # a clean STOPCAR stop
    assert not (run / "STOPCAR").exists() and not vasp_of(run)


@pytest.mark.slow
def test_a_killed_client_leaves_no_vasp_behind(tmp_path, socket_name):
    run, atoms = prepare(tmp_path)
    clients: list[subprocess.Popen] = []
    server = SocketIOCalculator(launch_client=client_launcher(run, clients), timeout=60,
                                unixsocket=socket_name)
    atoms.calc = server
    atoms.get_forces()
    ranks = vasp_of(run)
    assert ranks
    os.kill(clients[0].pid, signal.SIGKILL)  # the client dies while VASP waits (paused) for the next request
    clients[0].wait(timeout=10)
    assert wait_for(lambda: not vasp_of(run), 5.0), [p.pid for p in vasp_of(run)]
    with pytest.raises(Exception):  # noqa: B017 - the server sees its client gone (ASE raises OSError/IPIProtocolError)
        atoms.positions[-1, 2] += 0.01
        atoms.get_forces()
    server.close()


@pytest.mark.slow
def test_client_without_server_fails_clearly(tmp_path):
    run, _ = prepare(tmp_path)
    done = subprocess.run([CLIENT, "ipi", "--directory", str(run), "--command", MOCK_VASP, "--port", str(free_port()),
                           "--host", "127.0.0.1"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "cannot connect to the i-PI server" in done.stderr
    assert not vasp_of(run)


def write_ipi_input(tmp_path, atoms, name: str, steps: int = 60) -> None:
    """An i-PI 3.3 geometry optimisation (BFGS, bottom layers fixed) of ``atoms`` through a UNIX socket."""
    a, b, c, alpha, beta, gamma = atoms.cell.cellpar()
    rows = "".join(f"{s} {x:.10f} {y:.10f} {z:.10f}\n" for s, (x, y, z) in zip(atoms.get_chemical_symbols(),
                                                                           atoms.positions))
    (tmp_path / "init.xyz").write_text(
        f"{len(atoms)}\n# CELL(abcABC): {a:.8f} {b:.8f} {c:.8f} {alpha:.5f} {beta:.5f} {gamma:.5f} "
        "positions{angstrom} cell{angstrom}\n" + rows)
    fixed = [i for i, tag in enumerate(atoms.get_tags()) if tag >= 2]
    (tmp_path / "input.xml").write_text(f"""<simulation verbosity="low">
  <output prefix="sim"> <properties stride="1" filename="out"> [ step, potential{{electronvolt}} ] </properties>
  </output>
  <total_steps>{steps}</total_steps>
  <ffsocket name="vasp" mode="unix" pbc="false"> <address>{name}</address> <timeout>120</timeout> </ffsocket>
  <system>
    <initialize nbeads="1"> <file mode="xyz"> init.xyz </file> </initialize>
    <forces> <force forcefield="vasp"> </force> </forces>
    <motion mode="minimize"> <fixatoms> {fixed} </fixatoms>
      <optimizer mode="bfgs"> <tolerances> <energy> 1e-7 </energy> <force> 5e-4 </force>
      <position> 1e-4 </position> </tolerances> </optimizer>
    </motion>
  </system>
</simulation>
""")


def start_ipi(tmp_path, atoms, name):
    pytest.importorskip("ipi", reason="i-PI is not installed: pip install 'ipi>=3.3,<3.4' (part of the test extras)")
    write_ipi_input(tmp_path, atoms, name)
    server = subprocess.Popen([str(BIN / "i-pi"), "input.xml"], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    if not wait_for(lambda: os.path.exists(f"/tmp/ipi_{name}"), 60.0):
        server.kill()
        pytest.fail("i-PI did not open its socket within 60 s")
    return server


@pytest.mark.slow
def test_ipi_itself_optimises_through_the_client(tmp_path, socket_name):
    """i-PI 3.3 (PyPI ``ipi``) runs its own BFGS with the bottom layers fixed, VASP behind our client."""
    run, atoms = prepare(tmp_path)
    name = socket_name
    server = start_ipi(tmp_path, atoms, name)
    try:
        client = subprocess.run([CLIENT, "ipi", "--unix", name, "--directory", str(run), "--command", MOCK_VASP],
                                capture_output=True, text=True, timeout=300)
        log, _ = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
    assert client.returncode == 0, client.stderr
    assert "Geometry optimization converged" in log
    energies = [float(line.split()[1]) for line in (tmp_path / "sim.out").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert len(energies) >= 5 and energies[-1] < energies[0]
    # the same minimum as ASE's BFGS on the direct calculator (i-PI reports E(sigma->0))
    reference = atoms.copy()
    with VaspInteractive(command=MOCK_VASP, directory=tmp_path / "direct", **DIRECT) as direct:
        reference.calc = direct
        BFGS(reference, logfile=None).run(fmax=0.01, steps=200)
        assert energies[-1] == pytest.approx(reference.get_potential_energy(), abs=2e-3)
    assert "writing wavefunctions" in (run / "vasp.out").read_text() and not vasp_of(run)


@pytest.mark.slow
def test_a_killed_server_ends_the_client_and_its_vasp(tmp_path, socket_name):
    run, atoms = prepare(tmp_path)
    name = socket_name
    server = start_ipi(tmp_path, atoms, name)
    client = subprocess.Popen([CLIENT, "ipi", "--unix", name, "--directory", str(run), "--command", MOCK_VASP],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: (run / "vasp.out").exists() and (run / "vasp.out").read_text().count(" F=") >= 3,
                        120.0)
        server.kill()  # SIGKILL: no EXIT, the socket just dies
        server.wait(timeout=10)
        client.communicate(timeout=60)
    finally:
        for process in (server, client):
            if process.poll() is None:
                process.kill()
    assert client.returncode in (0, 1)  # socket closed (EXIT) or reset (an error): either way it ends
    assert wait_for(lambda: not vasp_of(run), 5.0)
    assert not (run / "STOPCAR").exists()
