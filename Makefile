PYTHON ?= python3
PIP = $(PYTHON) -m pip

.PHONY: setup train test test-fast lint bench-throughput bench-learning

# torch first: with no torch present, install the CPU build 2.13.0 (a bare `torch` would pull several GB of CUDA
# packages); a torch that is already installed (a GPU build, a newer release) is kept as it is.
setup:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "torch==2.13.0"
	$(PIP) install -e ".[dev,cluster]"

train: setup
	$(PYTHON) main.py --env-name PongNoFrameskip-v4

test: setup
	$(PYTHON) -m pytest -q --durations=15

# Everything but the learning, multi-process, slow and cluster tests (pyproject.toml names the markers).
test-fast: setup
	$(PYTHON) -m pytest -q -m "not learning and not multiprocess and not slow and not cluster"

lint:
	$(PYTHON) -m ruff check a3c tests benchmarks main.py
