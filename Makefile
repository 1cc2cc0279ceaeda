# The README's two commands. Both create .venv when missing and are idempotent.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.dmad-installed

.PHONY: demo test lint bench-train android-assets clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and exactly: pip must take the local CPU wheel, never resolve a CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	# tf-keras and onnx2tf without their deps (they would add the full tensorflow wheel).
	$(PY) -m pip install --quiet --no-deps $$($(PY) -c "import tomllib;print(' '.join(tomllib.load(open('pyproject.toml','rb'))['tool']['dmad']['no-deps']))")
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dmad demo

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .

# Put the demo's compressed and full generators into the Android app (after `make demo`).
android-assets: $(STAMP)
	$(VENV)/bin/dmad export --run runs/demo/finetune --out runs/demo/android/compressed --size 64 \
		--android --android-label compressed --force
	$(VENV)/bin/dmad export --run runs/demo/teacher --out runs/demo/android/full --size 64 \
		--android --android-label full --force

bench-train: $(STAMP)
	$(PY) benchmark/train_step.py

clean:
	rm -rf runs data .pytest_cache
