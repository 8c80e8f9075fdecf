# Two commands for a new user:  `make demo`  and  `make test`.
# Each creates .venv if missing and installs the project (editable) with pinned
# constraints; a second run skips the install (the stamp is newer than its inputs).
# bash: the install reads pip's exit status through a pipe (PIPESTATUS)
SHELL  := /bin/bash
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# dvc stages call `taming`, tests call `dvc` and `prefect`: use the venv's.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install demo test clean-venv bench app

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing into $(VENV), a line per package (full log: $(VENV)/install.log)"
	@SECONDS=0; $(BIN)/python -m pip install --progress-bar off -c constraints.txt -e '.[test]' 2>&1 \
	  | tee $(VENV)/install.log | grep --line-buffered -E '^(Collecting|Installing collected|Successfully)' \
	  | sed -u 's/^\(.\{108\}\).*/\1/; s/^/  /'; rc=$${PIPESTATUS[0]}; \
	  if [ $$rc -ne 0 ]; then grep -v '^WARNING: Location' $(VENV)/install.log | tail -40; exit 1; fi; \
	  echo "installed in $$SECONDS s: $$(du -sh $(VENV) | cut -f1) in $(VENV)"
	@touch $@

install: $(STAMP)

# The demo pipeline: offline, on the embedded procedural dataset (params.yaml).
demo: install
	$(BIN)/dvc repro

# The test suite. Exit code 5 ("no tests collected") is not a failure of the code.
# The sampling app (README "Sampling"): on http://127.0.0.1:$(APP_PORT), with the demo's
# transformer by default, so it works right after `make demo`.
APP_MODEL ?= data/transformer
APP_PORT  ?= 8501
app: install
	$(BIN)/streamlit run app/sampling_app.py --server.address 127.0.0.1 --server.port $(APP_PORT) \
	  --server.headless true --browser.gatherUsageStats false --client.toolbarMode viewer -- --model $(APP_MODEL)

# Tests run in TEST_WORKERS processes (pytest-xdist), a test file per process at a time:
# each test runs its torch work on one thread (tests/conftest.py), so two processes use
# both of a 2-core machine. TEST_WORKERS=0 runs them in this one process.
TEST_WORKERS ?= 2
test: install
	@$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

bench: install
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)

# Share through the DVC remote `storage` (README "Sharing through S3"): the outputs
# in dvc.lock, the run cache and the outputs of every run it records (tasks/share.py),
# so a clone that pulls skips any stage already run with the same inputs.
# botocore >= 1.36 sends CRC checksums that many S3-compatible stores reject:
# send them only when an operation requires them (an environment setting wins).
.PHONY: push pull
push pull: export AWS_REQUEST_CHECKSUM_CALCULATION ?= when_required
push pull: export AWS_RESPONSE_CHECKSUM_VALIDATION ?= when_required

push: install
	$(BIN)/taming share push

pull: install
	$(BIN)/taming share pull

# Prefect orchestration (README, "Orchestration with Prefect"): a local server
# whose SQLite database lives in .prefect/, the process that serves the deployments
# (it waits for the server), and a run of one deployment, followed to its end:
#   make prefect-run FLOW=sample PARAMS='{"top_k": [50, 250]}'
# (= prefect deployment run sample/sample --params ... --watch, with this server)
PREFECT_PORT ?= 4200
PREFECT_ENV  := PREFECT_HOME=$(CURDIR)/.prefect PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api \
                PREFECT_SERVER_ANALYTICS_ENABLED=false
FLOW   ?= train-drin
PARAMS ?= {}
.PHONY: prefect-server prefect-serve prefect-run

prefect-server: install
	$(PREFECT_ENV) $(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

prefect-serve: install
	$(PREFECT_ENV) $(BIN)/python -m flows.deployments --repo $(CURDIR)

prefect-run: install
	$(PREFECT_ENV) $(BIN)/prefect deployment run '$(FLOW)/$(FLOW)' --params '$(PARAMS)' --watch
