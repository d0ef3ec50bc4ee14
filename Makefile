# kdlab: every target creates or reuses .venv at the repository root.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_SPEC ?= torch==2.13.0
CONSTRAINTS ?= requirements/constraints-cpu.txt
STAMP := $(VENV)/.kdlab-installed

.PHONY: install demo test lint format bench bench-quick mutation clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/kdlab demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

bench-quick: $(STAMP)
	$(PY) benchmarks/loss_speed.py --quick --vocab 1000 32000 --out benchmarks/results/quick/loss_speed
	$(PY) benchmarks/engine_overhead.py --quick --out benchmarks/results/quick/engine_overhead
	$(PY) benchmarks/fidelity_fmnist.py --quick
	$(PY) benchmarks/fidelity_ensemble_fmnist.py --quick
	$(PY) benchmarks/feature_kd_fmnist.py --quick
	$(PY) benchmarks/reaugkd_fmnist.py --quick
	$(PY) benchmarks/disk_capacity_fmnist.py --quick
	$(PY) benchmarks/compress_fmnist.py --quick
	$(PY) benchmarks/peers/run.py --quick --allow-loaded --out benchmarks/results/quick/peers
	$(PY) benchmarks/lm_stdlib.py --study strong --quick

bench: $(STAMP)
	$(PY) benchmarks/loss_speed.py
	$(PY) benchmarks/engine_overhead.py
	$(PY) benchmarks/int8_footprint.py
	$(PY) benchmarks/fmnist_ready_configs.py
	$(PY) benchmarks/ptloss_fmnist.py
	$(PY) benchmarks/capacity_gap_fmnist.py
	$(PY) benchmarks/fidelity_fmnist.py
	$(PY) benchmarks/fidelity_ensemble_fmnist.py
	$(PY) benchmarks/feature_kd_fmnist.py
	$(PY) benchmarks/reaugkd_fmnist.py
	$(PY) benchmarks/disk_capacity_fmnist.py
	$(PY) benchmarks/lm_loss.py
	$(PY) benchmarks/lm_stdlib.py
	$(PY) benchmarks/lm_stdlib.py --study sparse
	$(PY) benchmarks/lm_stdlib.py --study tail
	$(PY) benchmarks/lm_stdlib.py --study strong
	$(PY) benchmarks/lm_stdlib.py --study tail-strong
	$(PY) benchmarks/lm_sparse_gap.py --work runs/lm_stdlib-strong
	$(PY) benchmarks/compress_fmnist.py
	$(PY) benchmarks/peers/run.py
	$(PY) benchmarks/cache_build.py
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/loss_speed.py --shapes 2048x32000 8192x1000 --reps 15 --threads 2 --no-memory --out benchmarks/results/loss_speed_lm
	$(PY) benchmarks/cost_model.py
	$(PY) benchmarks/rid_fmnist.py
	$(PY) benchmarks/rid_pid_epochs.py
	$(PY) benchmarks/dpd.py
	$(PY) benchmarks/text_rt_data.py && $(PY) benchmarks/text_rt.py
	# not here: benchmarks/cooperative.py (needs `apt-get install r-cran-mlbench` and `pip install rdata`)

# Mutation testing (docs/testing.md): not part of CI; tens of minutes on 2 cores (benchmarks/results/mutation.md
# records each run's wall time and load). MODULES picks groups
# (losses methods loop splits metrics caches); FRESH=1 forgets earlier mutants and test statistics; SURVIVORS=1
# reruns only the last run's survivors (after adding a test).
MUTMUT_SPEC ?= mutmut==3.8.0
MODULES ?= losses methods loop splits metrics caches
mutation: $(STAMP)
	$(PIP) install --quiet -c $(CONSTRAINTS) "$(MUTMUT_SPEC)"
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 10 $(PY) benchmarks/mutation.py --modules $(MODULES) \
		$(if $(FRESH),--fresh) $(if $(SURVIVORS),--survivors)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .mutation
