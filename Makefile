# The two commands: `make demo` and `make test`. Each sets up .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# A small CPU build of torch for this machine class; the package itself asks only torch>=2.1.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup test demo docs wheel-check lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" || $(PY) -m pip install --quiet "torch>=2.1"
	$(PY) -m pip install --quiet -e ".[dev,plot,progress,fast,singlecell,images]"
	$(PY) -m otcfm._ot  # compile the numba kernels once, into numba's cache
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/otcfm demo --out runs/demo

# The documentation site (docs/conf.py): guides, concepts, recipes, API reference, examples
# gallery, into docs/_build/html. Warnings are errors; broken internal links are warnings.
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	rm -rf docs/_build docs/auto_examples
	$(PY) -m sphinx -b html -q -W --keep-going docs docs/_build/html
	@echo "site: docs/_build/html/index.html"

# A built wheel installs into a fresh virtual environment with the core dependencies alone,
# and `import otcfm` plus the README quickstart work there.
wheel-check:
	bash .ci/wheel_check.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples docs

clean:
	rm -rf $(VENV) runs .pytest_cache docs/_build docs/auto_examples docs/api docs/_generated
