PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench install tfmot-venv
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tfquant demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q tests

bench: $(STAMP) .venv-tfmot/.installed
	$(BIN)/python benchmarks/qat_speed.py

# The tfmot baseline runs only on legacy Keras 2: a separate venv, used by benchmarks only.
.venv-tfmot/.installed:
	test -d .venv-tfmot || $(PY) -m venv .venv-tfmot
	.venv-tfmot/bin/pip install -q --upgrade pip
	.venv-tfmot/bin/pip install -q "tensorflow==2.21.*" "tf-keras==2.21.*" "tensorflow-model-optimization==0.8.*" ai-edge-litert mlxtend scikit-learn
	touch .venv-tfmot/.installed

tfmot-venv: .venv-tfmot/.installed
