# Two entry points for a fresh machine: `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
GPAW_STAMP := $(VENV)/.gpaw
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
export HF_HUB_OFFLINE := 1
export OMP_NUM_THREADS ?= 1

.PHONY: demo test lint gpaw slurm bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e '.[all]'
	touch $@

# GPAW (a real DFT code used as a physics backend of the fake VASP); see tools/install_gpaw.sh.
$(GPAW_STAMP): $(STAMP)
	bash tools/install_gpaw.sh $(VENV)
	touch $@

gpaw: $(GPAW_STAMP)

# fairchem-core (optional surrogate backend; about 1.5 GB): tested with a locally built checkpoint.
FAIRCHEM_STAMP := $(VENV)/.fairchem
$(FAIRCHEM_STAMP): $(STAMP)
	$(PIP) install --quiet -c constraints.txt -e '.[fairchem]'
	touch $@

demo: $(STAMP)
	$(VENV)/bin/finetuna demo

# Slurm, munge and PMIx from apt, for the tests' private one-node Slurm cluster (tests/slurm_cluster.py).
slurm:
	bash tools/install_slurm.sh

test: $(STAMP) $(GPAW_STAMP) $(FAIRCHEM_STAMP) slurm
	@status=0; $(PY) -m pytest || status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: that is a failure" >&2; exit 1; fi; \
	exit $$status

lint: $(STAMP)
	$(VENV)/bin/ruff check vasp_interactive mock_vasp finetuna_core benchmarks tests

bench: $(STAMP)
	$(PY) -m benchmarks.run_all --quick

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
