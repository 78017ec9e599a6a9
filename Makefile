# Two commands for a newcomer: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test install tools native clean-native lint proto proto-baseline bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## make run: start the sidecar on the embedded demo config (proxy :8000, admin :9901/:9902)
## (compiles the data path first when a C compiler is there; else it runs interpreted)
run: $(STAMP)
	-$(BIN)/python scripts/build_native.py
	$(BIN)/sidecar run

tools:
	PYTHON=$(PYTHON) ./scripts/install-tools.sh

## make test: lint protos and code, check generated code is fresh, type-check, compile the
## data path, run the tests on it, then again on the same modules interpreted
test: $(STAMP) tools
	$(BIN)/buf lint
	$(BIN)/buf breaking --against proto/baseline.binpb
	$(BIN)/python scripts/generate_protos.py --check
	$(BIN)/ruff check setup.py sidecar admin tests scripts bench
	$(BIN)/mypy sidecar admin
	$(BIN)/python scripts/build_native.py
	$(BIN)/python -m pytest -q
	SIDECAR_INTERPRETED=1 $(BIN)/python -m pytest -q

## make native: compile the data path's modules with mypyc (sidecar/compiled.py lists them)
native: $(STAMP)
	$(BIN)/python scripts/build_native.py

clean-native:
	$(BIN)/python scripts/build_native.py --clean

## make proto: regenerate sidecar/admin/v1 and admin/client from proto/
proto: $(STAMP)
	$(BIN)/python scripts/generate_protos.py

## make proto-baseline: accept the current API as the one `buf breaking` protects (at a release)
proto-baseline: $(STAMP)
	$(BIN)/buf build -o proto/baseline.binpb

lint: $(STAMP)
	$(BIN)/ruff check setup.py sidecar admin tests scripts bench
	$(BIN)/mypy sidecar admin

bench: $(STAMP)
	./bench/run.sh

clean: clean-native
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
