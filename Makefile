# The two commands of the README:
#   make demo   set up, then run the demo DAG end to end on a synthetic world and print the metrics
#   make test   set up, then run the test suite
# Set ORT=gpu|cpu to force the ONNX Runtime build (default: gpu when nvidia-smi sees a GPU).

PYTHON ?= python3
VENV ?= .venv
ORT ?= auto
CORES ?= 2
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install lock demo demo-full test test-fast lint dvc-yaml clean-results

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt workflow/scripts/select_onnxruntime.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch torchvision
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	bash workflow/scripts/select_onnxruntime.sh $(PY) $(ORT)
	$(PY) -m reid dvc-yaml --plots-page
	touch $@

# Rewrite constraints.txt from the current environment (after a deliberate upgrade; commit it with new numbers).
lock: install
	{ sed -n '1,2p' constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -v '^ruff=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

# The demo is DeSKPro's whole chain on synthcc (the method with the most auxiliary models: parsing, faces, restored
# faces, a face teacher and its cached logits), sized to finish within 10 minutes on 2 cores. The three-run demo of
# earlier rounds, with a ResNet-18 baseline on both worlds beside it: make demo-full (about 14 minutes).
DEMO_TARGETS ?= results/synthcc/deskpro/metrics.json
DEMO_FULL := results/synthcc/baseline/metrics.json results/synthcc/deskpro/metrics.json \
	results/synthocc/baseline/metrics.json

demo: install
	snakemake --cores $(CORES) $(DEMO_TARGETS)
	$(PY) -m reid show-metrics $(DEMO_TARGETS)

demo-full:
	$(MAKE) demo DEMO_TARGETS="$(DEMO_FULL)"

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow and not cluster"

test-cluster: install
	$(PY) -m pytest -q -m cluster

lint: install
	snakemake --lint
	$(PY) -m reid dvc-yaml --check

dvc-yaml: install
	$(PY) -m reid dvc-yaml
