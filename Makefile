# The README's two commands. Both create .venv when missing and are idempotent.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.dmad-installed

.PHONY: demo test lint layers adb chromium android-check bench-train android-assets clean

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

# The tests drive the real adb client against an emulated phone: install Debian's `adb` when it
# is missing and we can (root, or password-less sudo); otherwise say why those tests will skip.
adb:
	@command -v adb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	  else echo "make: cannot install adb (not root, no password-less sudo): the adb tests" \
	    "will be skipped; install Debian's package 'adb' and rerun" >&2; exit 0; fi; \
	  echo "make: installing Debian's adb client (needed by the Android tests)"; \
	  { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    adb >/dev/null; } || echo "make: apt-get could not install adb: the adb tests will be" \
	    "skipped" >&2; }

# `dmad translate`'s page is checked in a real browser: Debian's chromium, installed the same way.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	  else echo "make: cannot install chromium (not root, no password-less sudo): the page" \
	    "test will be skipped; install Debian's package 'chromium' and rerun" >&2; exit 0; fi; \
	  echo "make: installing Debian's chromium (the headless page test)"; \
	  { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    chromium >/dev/null; } || echo "make: apt-get could not install chromium: the page" \
	    "test will be skipped" >&2; }

test: $(STAMP) adb chromium layers android-check
	$(PY) -m pytest

# Compile every Kotlin source of the Android app with -Werror against android.jar, R and stubs of
# the LiteRT/androidx APIs (toolchain fetched once into ~/.cache/dmad-android; see the script).
android-check:
	bash scripts/android_check.sh

lint: $(STAMP) layers
	$(PY) -m ruff check .

# The layer contract (pyproject [tool.importlinter]): application -> benchmark -> export -> compress.
layers: $(STAMP)
	$(PY) scripts/check_layers.py

# Put the demo's compressed and full generators into the Android app (after `make demo`).
android-assets: $(STAMP)
	$(VENV)/bin/dmad export --run runs/demo/finetune --out runs/demo/android/compressed --size 64 \
		--android --android-label compressed --force
	$(VENV)/bin/dmad export --run runs/demo/teacher --out runs/demo/android/full --size 64 \
		--android --android-label full --force

bench-train: $(STAMP)
	$(PY) scripts/train_step.py

clean:
	rm -rf runs data .pytest_cache
