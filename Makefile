# The README's two commands. Both create .venv when missing and are idempotent.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.dmad-installed

.PHONY: demo test lint layers adb chromium android-check android-unit-tests bench-train android-assets clean

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

# A Debian package the tests need, installed when missing and we can (root, or password-less
# sudo); otherwise say which tests will skip. $(1): package and command, $(2): its tests.
define apt_need
	@command -v $(1) >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	  else echo "make: cannot install $(1) (not root, no password-less sudo): $(2) will be" \
	    "skipped; install Debian's package '$(1)' and rerun" >&2; exit 0; fi; \
	  echo "make: installing Debian's $(1) (needed by $(2))"; \
	  { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    $(1) >/dev/null; } || echo "make: apt-get could not install $(1): $(2) will be" \
	    "skipped" >&2; }
endef

# The tests drive the real adb client against an emulated phone.
adb:
	$(call apt_need,adb,the adb tests)

# `dmad translate`'s page is checked in a real browser.
chromium:
	$(call apt_need,chromium,the page test)

# TEST_WORKERS=auto spreads the tests over the cores (pytest-xdist): a quarter faster on two
# cores, but there the two-rank torchrun kill/resume test once aborted under the load of the
# other worker, so the default is one process (0). The 25 slowest tests are listed at the end.
TEST_WORKERS ?= 0
test: $(STAMP) adb chromium layers android-check android-unit-tests
	$(PY) -m pytest -n $(TEST_WORKERS) --durations=25

# Compile every Kotlin source of the Android app with -Werror against android.jar, R and stubs of
# the LiteRT/androidx APIs (toolchain fetched once into ~/.cache/dmad-android; see the script).
android-check:
	bash scripts/android_check.sh

# The app's JVM unit tests (JUnit 4): its pure-Kotlin logic (model.json, A/B runs, medians, input
# geometry, EXIF) compiled with -Werror on a plain JVM and run here (same kotlinc; see the script).
android-unit-tests:
	bash scripts/android_unit_tests.sh

lint: $(STAMP) layers
	$(PY) -m ruff check .

# The layer contract (pyproject [tool.importlinter]): application -> benchmark -> export -> compress.
layers: $(STAMP)
	$(PY) scripts/check_layers.py

# Put the demo's compressed and full generators into the Android app (after `make demo`).
android-assets: $(STAMP)
	$(VENV)/bin/dmad export --run runs/demo/finetune --out runs/demo/android/compressed --size 256 \
		--android --android-label compressed --force
	$(VENV)/bin/dmad export --run runs/demo/teacher --out runs/demo/android/full --size 256 \
		--android --android-label full --force

bench-train: $(STAMP)
	$(PY) scripts/train_step.py

clean:
	rm -rf runs data .pytest_cache
