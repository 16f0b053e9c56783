# Set-up and everyday commands. `make demo` and `make test` work on a fresh clone.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo demo-languages test test-all test-fast test-interop bench bench-scale mutants clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: the CPU wheel here, the CUDA build on a GPU box; never torchvision.
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/altclip-train demo

# Growing the demo model to new languages, with and without replay, and the phase-1 objective ablation
# (README "Continuing a trained model"); needs `make demo` first, ~8 min here.
demo-languages: $(STAMP)
	$(VENV)/bin/altclip-train demo --grow

# The suite CI runs (~13 min here); test-all adds the heavy end-to-end runs (~20 min).
test: $(STAMP)
	$(PY) -m pytest -q -m "not heavy"

test-all: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not deepspeed"

# open_clip and CLIP_benchmark interop (README "open_clip and CLIP_benchmark"): its own venv, as open_clip needs
# torchvision (a large torch); the project is imported from this tree. First run: a few minutes to build the venv.
INTEROP_VENV ?= .venv-interop
$(INTEROP_VENV)/.bench-ready: $(STAMP) bench/setup_env.sh
	BENCH_VENV=$(INTEROP_VENV) EXTRA_PIP="clip-benchmark==1.6.2 pytest pytest-timeout scikit-image" \
		bash bench/setup_env.sh

test-interop: $(INTEROP_VENV)/.bench-ready
	PYTHONPATH=$(CURDIR) $(INTEROP_VENV)/bin/python -m pytest -q tests/interop -p no:cacheprovider

bench: $(STAMP)
	$(PY) bench/run_all.py

# Corpus scale (BENCHMARKS.md "Corpus scale"): phase-1 setup and the image cache at 3 sizes, ~25 min here.
bench-scale: $(STAMP)
	$(PY) bench/scale_phase1.py --json-out bench/results/scale.json

# Mutation testing (BENCHMARKS.md "Mutation score"): hand-written bugs in the losses, LR schedule, accumulation,
# clipping, teacher target and preprocessing, each run against its tests on a temporary copy of HEAD; ~12 min.
mutants: $(STAMP)
	$(PY) scripts/mutants.py --json-out bench/results/mutants.json

clean:
	rm -rf outputs multirun .pytest_cache
