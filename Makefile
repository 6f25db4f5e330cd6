# The README's two commands:  `make run` (main job on the embedded default)  and  `make test`.
# Both create the environments first (idempotent: a stamp file per env, rebuilt when its lock changes).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
ENGINE := .venv-vllm
PORT   ?= 4200
# Where torch==2.13.0+cpu comes from if this machine has no local copy, e.g.
#   make setup TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
TORCH_CPU_INDEX ?=
GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
export SEVA_ROOT := $(CURDIR)
export HF_HUB_OFFLINE := 1
# Prefect's environment is set by seva itself (seva_tasks/serve.py): a `seva serve` on this port if
# one answers, else a temporary server. No global PREFECT_API_URL, so nothing fails for want of a server.
export SEVA_PREFECT_PORT := $(PORT)
# Only for the Prefect CLI talking to the server `make run` started.
SERVER_ENV := PREFECT_API_URL=http://127.0.0.1:$(PORT)/api PREFECT_HOME=$(CURDIR)/.prefect

.PHONY: setup browser run test stop bench experiment screenshots lock clean-artifacts

setup: $(VENV)/.installed $(ENGINE)/.installed

$(VENV)/.installed: requirements/pipeline.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements/pipeline.lock
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

# The engine env is installed from an explicit list with --no-deps, so torchaudio/torchcodec/triton
# (unused on CPU, broken beside torch+cpu) never come in; torchvision comes in for Qwen2-VL, made
# importable by engines/_shim/sitecustomize.py (DESIGN §4).
$(ENGINE)/.installed: requirements/engine.lock requirements/engine-gpu.in pyproject.toml
	$(PYTHON) -m venv $(ENGINE)
ifeq ($(GPU),1)
	$(ENGINE)/bin/pip install -q -r requirements/engine-gpu.in
else
	$(ENGINE)/bin/pip install -q --no-deps -r requirements/engine.lock $(if $(TORCH_CPU_INDEX),--extra-index-url $(TORCH_CPU_INDEX))
endif
	$(ENGINE)/bin/pip install -q --no-deps -e .
	touch $@

# Main job: local Prefect server + worker on 127.0.0.1, then the `full` deployment on the toy world.
run: setup
	$(VENV)/bin/seva serve --background --port $(PORT)
	$(SERVER_ENV) $(VENV)/bin/prefect deployment run seva/full --watch
	@$(VENV)/bin/seva status
	@echo "Artifacts: $(CURDIR)/data/artifacts/<stage>/<key>/  (manifest.json in each)"
	@echo "Prefect UI: http://127.0.0.1:$(PORT)   (stop the server and worker with: make stop)"

# Two workers, one test file each at a time (module fixtures stay in one process): most slow tests wait on
# servers and engine starts, so the two cores overlap them. The longest files go first (tests/conftest.py
# orders them; xdist's own reorder puts files with many tests first, which left e2e running alone at the end).
test: setup browser
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

# Debian's Chromium for tests/test_ui.py, which Playwright drives (a browser download, `playwright install`,
# does not work offline). Never fails the target: where apt-get cannot install it, that test skips and says why.
browser:
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null && apt-get update -q && apt-get install -y -q chromium; } \
	  || echo "Chromium not installed (no /usr/bin/chromium): tests/test_ui.py will be skipped."

stop:
	-$(VENV)/bin/seva stop

# SeVa on the faithful miniature: base models that see (one per seed), SeVa and four controls over 3 seeds
# -> experiments/miniature-seva/ (~29 min cold on 2 cores, two runs at once; the vicuna and tower on two threads). make run's world: seva experiment configs/experiments/toy-seva.yaml
experiment: setup
	$(VENV)/bin/seva experiment configs/experiments/miniature.yaml

bench: setup
	$(VENV)/bin/python bench/run.py

# docs/flow-run.png and docs/evaluate-report.png (the README shows them): a toy run on a temporary
# server (free port, temp data dir), photographed in Chromium. SCREENSHOTS_ARGS=--quick: small overrides.
screenshots: setup browser
	$(VENV)/bin/python docs/screenshots.py $(SCREENSHOTS_ARGS)

# Regenerate the pipeline lock from pipeline.in in a scratch env (engine.lock: see its header).
lock:
	rm -rf /tmp/seva-lock && $(PYTHON) -m venv /tmp/seva-lock
	/tmp/seva-lock/bin/pip install -q -r requirements/pipeline.in
	{ echo "# Pipeline environment (.venv): 'make lock' regenerates this from requirements/pipeline.in."; \
	  /tmp/seva-lock/bin/pip freeze; } > requirements/pipeline.lock

clean-artifacts:
	rm -rf data/artifacts data/prefect-results
