# CI and local entry points. `make test` is the one test command the README and .ci/run use.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RECIPE ?= recipes/seg.yaml

.PHONY: setup test lint typecheck schema build validate plan demo gpu wheelhouse clean

$(BIN)/trtflow: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[ort,rtx,lower,plot,triton,serve,dev]'
	$(BIN)/pip install -q --no-deps 'tensorrt-stubs>=10.13'
	$(BIN)/python tests/test_backend_trt.py typings
	touch $@

setup: $(BIN)/trtflow ## create .venv with every extra this machine can use

test: setup ## the whole CPU test suite (GPU tests skip cleanly without a GPU)
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check trtflow tests examples

typecheck: setup ## includes the tensorrt backend, checked against tensorrt-stubs
	$(BIN)/mypy trtflow

schema: setup ## fail if schemas/recipe.schema.json is stale
	$(BIN)/trtflow schema --check

plan: setup
	$(BIN)/trtflow plan $(RECIPE)

build: setup
	$(BIN)/trtflow build $(RECIPE)

validate: setup
	$(BIN)/trtflow validate $(RECIPE)

demo: setup ## the README's main job: plan, build and validate the shipped example
	$(BIN)/trtflow plan $(RECIPE)
	$(BIN)/trtflow validate $(RECIPE)

gpu: ## on the GPU machine: GPU tests + benchmarks
	bash scripts/gpu_suite.sh && bash scripts/gpu_bench.sh

# Offline GPU hosts: `make wheelhouse EXTRAS=trt,cuda,ort PYTHON_VERSION=3.11 GLIBC=2.28`, copy wheelhouse/
# over, then `pip install --no-index --find-links wheelhouse 'trtflow[trt,cuda,ort]'` (docs/getting-started.md).
EXTRAS ?= trt,cuda,ort
PYTHON_VERSION ?= 3.11
GLIBC ?= 2.28
wheelhouse: ## download every wheel trtflow[$(EXTRAS)] needs on an offline Linux x86_64 host into wheelhouse/
	PYTHON="$$( [ -x $(BIN)/python ] && echo $(BIN)/python || echo $(PY) )" bash scripts/wheelhouse.sh \
	  --extras '$(EXTRAS)' --python '$(PYTHON_VERSION)' --glibc '$(GLIBC)' --dest wheelhouse

clean:
	rm -rf build .pytest_cache .mypy_cache
