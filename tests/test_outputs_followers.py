"""Incremental OUTCAR / vasprun.xml readers on real (truncated) VASP files."""

from __future__ import annotations

import numpy as np
import pytest
from ase.io import read
from ase.units import GPa

from vasp_interactive.outputs import OutcarFollower, VasprunFollower


def test_truncated_vasp544_outcar(shared, tmp_path):
    """The 5.4.4 files stop at an 8 KiB boundary: step 1 is complete, step 2 is missing."""
    step1 = shared / "fixtures/vasp/vasp544_truncated/step-1"
    follower = OutcarFollower(step1 / "OUTCAR")
    assert follower.update() == 1
    expected = -np.array([-12.90666, -1.48004, -1.48004, 0.0, -0.0, 0.0]) * 0.1 * GPa
    assert np.allclose(follower.stress[1], expected, atol=1e-8)
    assert follower.efermi[1] == pytest.approx(-8.4521)
    ase_steps = read(step1 / "OUTCAR", format="vasp-out", index=":")
    assert len(ase_steps) == follower.steps_completed
    assert np.allclose(ase_steps[0].get_stress(), follower.stress[1], atol=1e-8)
    step0 = OutcarFollower(shared / "fixtures/vasp/vasp544_truncated/step-0/OUTCAR")
    assert step0.update() == 0 and not step0.stress  # the only step is not flushed yet


def test_vasprun_follower_on_truncated_file(shared):
    step1 = shared / "fixtures/vasp/vasp544_truncated/step-1"
    follower = VasprunFollower(step1 / "vasprun.xml")
    assert follower.update() == 1
    assert np.allclose(follower.stress[1][:3], -np.array([-12.90666474, -1.48003972, -1.48003984]) * 0.1 * GPa)


def test_growing_file_in_odd_chunks_equals_whole_read(shared, tmp_path):
    data = (shared / "fixtures/vasp/vasp544_truncated/step-1/OUTCAR").read_bytes()
    target = tmp_path / "OUTCAR"
    target.write_bytes(b"")
    follower = OutcarFollower(target)
    offset = 0
    for size in (5, 8191, 1, 4000, 12000, 3, len(data)):
        with open(target, "ab") as handle:
            handle.write(data[offset: offset + size])
        offset += size
        follower.update()
    whole = OutcarFollower(shared / "fixtures/vasp/vasp544_truncated/step-1/OUTCAR")
    whole.update()
    assert follower.steps_completed == whole.steps_completed == 1
    assert np.allclose(follower.stress[1], whole.stress[1])
    target.write_bytes(data[:1000])  # VASP restarted: the file shrank
    assert follower.update() == 0 and not follower.stress
