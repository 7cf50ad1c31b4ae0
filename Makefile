# The two commands of README.md: `make run` (the main job) and `make test` (what CI runs).
# Both create .venv and install the project into it on first use; re-running is a no-op
# until settings.ini or setup.py change. pip compiles every installed file to bytecode on one core (about a minute of
# set-up for torch alone); compileall does it on every core afterwards and skips the packages' test helpers,
# which nothing here imports (some are written for newer Pythons and do not compile).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.kdbus-installed
DATA    ?= synth
PROFILE ?= quick
LOSS    ?= kld

.PHONY: setup run test book docs clean
setup: $(STAMP)

$(STAMP): settings.ini setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --no-compile -e '.[dev]'
	$(BIN)/python -m compileall -q -j 0 -x '/tests?/|/testing/_internal/' "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
	touch $(STAMP)

# Main job: one experiment of the paper through papermill (default: the paper's best student,
# L_KLD_WAug, fold 0, quick profile, synthetic data; its teacher is trained first). The run's
# files land in runs/L_KLD_WAug/fold0/, the executed notebook in runs/run.ipynb.
run: $(STAMP)
	mkdir -p runs
	$(BIN)/papermill nbs/run.ipynb runs/run.ipynb -p loss $(LOSS) -p profile $(PROFILE) -p data $(DATA) -p out_dir runs

# The test command: notebooks clean and exported (nothing may change), pytest, then every notebook.
# pytest gets the three files of subprocess grids first, so that they start at once on the two workers.
# One OpenMP thread per process: two test workers already fill two cores, and PyTorch's default (a thread per
# core in every process, each spinning while it waits) made the suite use a third more CPU for the same work.
test: $(STAMP)
	@before="$$(git status --porcelain; git diff)"; \
	$(BIN)/nbdev_clean && $(BIN)/nbdev_export || exit 1; \
	after="$$(git status --porcelain; git diff)"; \
	if [ "$$before" != "$$after" ]; then \
	  echo "nbdev_clean/nbdev_export changed files: run them and commit the result."; \
	  git status --short; exit 1; fi
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadfile --durations=25 tests/test_grid.py tests/test_ray.py tests/test_papermill.py tests
	OMP_NUM_THREADS=1 $(BIN)/nbdev_test --n_workers 2 --timing

# Every notebook of nbs/ executed in place (smoke profile, as nbdev_test runs them) and cleaned: commit the result.
book: $(STAMP)
	$(BIN)/python tools/book.py
	$(BIN)/nbdev_clean

# The site of the executed notebooks, in _site/ (not committed): open _site/index.html.
docs: $(STAMP)
	$(BIN)/python tools/docsite.py --out _site

clean:
	rm -rf $(VENV) build dist *.egg-info
