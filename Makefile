# make repro: set up (once) and run the whole pipeline on the offline demo.
# make test:  set up (once) and run the test suite.
# make ui:    serve the web UI over what the pipeline trained (http://127.0.0.1:7860).
VENV := .venv
BIN := $(VENV)/bin
READY := $(VENV)/.ready
export HF_HUB_OFFLINE ?= 1
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: repro test ui setup clean

setup: $(READY)

$(READY): requirements.txt pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt -e .
	touch $@

repro: $(READY)
	dvc repro

# Two test processes, a test file each (--dist loadfile: the e2e files keep their order): the e2e
# tests spend most of their time importing torch in stage processes, one core each.
test: $(READY)
	python -m pytest -n 2 --dist loadfile

ui: $(READY)
	stylemix ui

clean:
	rm -rf $(VENV)
