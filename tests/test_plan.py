"""The stream-or-restart decision, every branch, without a process."""

from __future__ import annotations

import pytest
from ase.calculators.calculator import all_changes

from vasp_interactive import InteractiveSettings, RestartPolicy
from vasp_interactive.plan import (
    Refuse,
    Restart,
    RestartReason,
    Reuse,
    Stream,
    VaspState,
    can_stream_cell,
    describe,
    plan_step,
    restart_for,
)
from vasp_interactive.protocol import LatticeCapability

SETTINGS = InteractiveSettings()
UNKNOWN, STREAMS, CANNOT = LatticeCapability.UNKNOWN, LatticeCapability.STREAMS, LatticeCapability.CANNOT
WAITING = VaspState.WAITING


def plan(changes=("positions",), vasp=WAITING, capability=UNKNOWN, settings=SETTINGS, **flags):
    return plan_step(changes, vasp, capability, settings, **flags)


def test_nothing_changed_reuses_the_last_result():
    assert plan((), has_result=True) == Reuse()
    assert plan((), has_result=False) == Stream(cell_changed=False)  # e.g. after a refused ML step
    assert plan((), has_result=True, parameters_changed=True) == Restart(RestartReason.PARAMETERS, warn=True)
    assert plan((), vasp=VaspState.NOT_STARTED, has_result=True) == Reuse()


def test_moved_atoms_stream():
    assert plan(("positions",)) == Stream(cell_changed=False)
    assert plan(("positions", "initial_charges", "momenta"), capability=CANNOT) == Stream(cell_changed=False)


@pytest.mark.parametrize("capability, streams", [(UNKNOWN, True), (STREAMS, True), (CANNOT, False)])
def test_a_new_cell_streams_unless_this_vasp_cannot(capability, streams):
    decision = plan(("positions", "cell"), capability=capability)
    assert decision == (Stream(cell_changed=True) if streams else Restart(RestartReason.CELL, warn=True))
    assert can_stream_cell(capability, SETTINGS) is streams


def test_stream_lattice_no_restarts_on_every_cell_change():
    settings = InteractiveSettings(stream_lattice="no")
    assert plan(("cell",), capability=STREAMS, settings=settings) == Restart(RestartReason.CELL, warn=True)
    assert plan(("positions",), capability=STREAMS, settings=settings) == Stream()


def test_vasp_not_waiting_decides_first():
    assert plan(vasp=VaspState.NOT_STARTED) == Restart(RestartReason.START)
    assert plan(vasp=VaspState.EXHAUSTED) == Restart(RestartReason.BUDGET)  # silent: NSW is a budget
    assert plan(vasp=VaspState.ENDED) == Restart(RestartReason.ENDED, warn=True)
    # a dead VASP restarts whatever changed, and the policy cannot refuse it
    strict = InteractiveSettings(restart=RestartPolicy(cell="error", system="error"))
    for state, reason in ((VaspState.NOT_STARTED, RestartReason.START), (VaspState.EXHAUSTED, RestartReason.BUDGET),
                          (VaspState.ENDED, RestartReason.ENDED)):
        decision = plan(tuple(all_changes), vasp=state, settings=strict, parameters_changed=True)
        assert isinstance(decision, Restart) and decision.reason is reason


def test_parameters_then_system_then_cell():
    decision = plan(tuple(all_changes), parameters_changed=True)
    assert decision == Restart(RestartReason.PARAMETERS, warn=True) and decision.keeps_wavecar
    decision = plan(("positions", "numbers", "cell", "pbc"), capability=STREAMS)
    assert decision == Restart(RestartReason.SYSTEM, changed=("numbers", "pbc"), warn=True)
    assert decision.what == "numbers,pbc changed" and not decision.keeps_wavecar
    assert plan(("initial_magmoms",)).changed == ("initial_magmoms",)


def test_restart_policy_error_refuses_and_warn_false_is_silent():
    strict = InteractiveSettings(restart=RestartPolicy(cell="error", system="error"))
    assert plan(("cell",), capability=CANNOT, settings=strict) == Refuse(RestartReason.CELL)
    assert plan(("numbers",), settings=strict) == Refuse(RestartReason.SYSTEM, ("numbers",))
    assert plan(("positions",), settings=strict, parameters_changed=True) == Refuse(RestartReason.PARAMETERS)
    assert plan(("cell",), capability=UNKNOWN, settings=strict) == Stream(cell_changed=True)  # the probe may work
    only_cell = InteractiveSettings(restart=RestartPolicy(cell="error"))
    assert plan(("numbers",), settings=only_cell) == Restart(RestartReason.SYSTEM, ("numbers",), warn=True)
    quiet = InteractiveSettings(restart=RestartPolicy(warn=False))
    assert plan(("cell",), capability=CANNOT, settings=quiet) == Restart(RestartReason.CELL)
    assert plan(vasp=VaspState.ENDED, settings=quiet) == Restart(RestartReason.ENDED)


def test_restart_after_a_failed_probe_and_for_the_force_field():
    assert restart_for(RestartReason.CELL, RestartPolicy()) == Restart(RestartReason.CELL, warn=True)
    assert restart_for(RestartReason.CELL, RestartPolicy(cell="error")) == Refuse(RestartReason.CELL)
    force_field = restart_for(RestartReason.FORCE_FIELD, RestartPolicy(system="error"))
    assert force_field == Restart(RestartReason.FORCE_FIELD) and force_field.counts_as_restart


def test_every_reason_is_described():
    texts = {reason: describe(reason, ("numbers",)) for reason in RestartReason}
    assert len(set(texts.values())) == len(RestartReason) and all(texts.values())
    assert texts[RestartReason.CELL] == "the cell changed and this VASP cannot stream a lattice"
    assert Refuse(RestartReason.PARAMETERS).what == "calculator parameters changed"
    assert not Restart(RestartReason.START).counts_as_restart
    assert all(Restart(reason).counts_as_restart for reason in RestartReason if reason is not RestartReason.START)
