# pyro-moe: `make demo` and `make test` each create .venv if it is missing and install the
# project into it (a CPU build of torch first, so the project's `torch>=2.2` adds nothing).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0
DEMO := runs/demo
# the suite runs in this many processes (pytest-xdist): one per core of a 2-core machine, each
# with one torch thread (two threads per worker on two cores doubled the suite's wall time)
TEST_WORKERS ?= 2
DEMO_TRAIN := train moe --data bishop -K 3 -o gate=mlp --epochs 200 --batch-size 100 \
	--lr 0.02 --patience 40 --overwrite

.PHONY: venv demo test lint format bench notebooks clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pyro-moe $(DEMO_TRAIN) --estimator enum --out $(DEMO)/enum
	$(BIN)/pyro-moe $(DEMO_TRAIN) --estimator reinforce --guide posterior --guide-lr 0.1 \
		--out $(DEMO)/reinforce
	$(BIN)/pyro-moe compare-estimators --model moe --data sign-flip --data-option n=400 -K 3 \
		--estimators enum,reinforce,rloo,vimco,gumbel,st-gumbel,question --epochs 15 \
		--num-estimates 200 --out $(DEMO)/estimators
	@echo
	@echo "estimator comparison in $(DEMO)/estimators: estimators.md, bias_variance.png, snr.png"
	@echo "demo runs written to $(DEMO)/enum and $(DEMO)/reinforce:"
	@echo "  fit.png (predictive density, experts, gate), training.png, metrics.csv, summary.json"

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS)

# every benchmark script's quick version (the smoke arguments of tests/test_scripts.py), writing
# into temporary folders; the full protocols are `python benchmarks/NAME.py` (see each docstring)
bench: $(STAMP)
	$(BIN)/python -m pytest -q tests/test_scripts.py -k benchmark

# re-execute every notebook at its full budget and save it with its outputs and figures, so that
# it reads where the code is hosted (the tests execute them again on a small budget); pyro imports
# tqdm.auto, which warns in a kernel without ipywidgets
notebooks: $(STAMP)
	cd notebooks && for nb in *.ipynb; do \
		MPLBACKEND=module://matplotlib_inline.backend_inline PYTHONWARNINGS="ignore:IProgress" \
		../$(BIN)/jupyter-execute --inplace --timeout=3600 "$$nb" || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
