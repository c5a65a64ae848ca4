# Two commands do all the set-up: `make demo` and `make test` (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
PLUGIN_PROJECTS := $(sort $(wildcard plugins/*/pyproject.toml))
PLUGIN_DIRS := $(patsubst %/pyproject.toml,%,$(PLUGIN_PROJECTS))
STAMP := $(VENV)/.install-stamp
EXTRAS ?= dev,postgres,ray

.PHONY: install demo test lint bench clean

$(PY):
	python3 -m venv $(VENV)

# Re-install only when a project file changed (editable installs pick up code edits).
$(STAMP): $(PY) pyproject.toml $(PLUGIN_PROJECTS)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[$(EXTRAS)]' $(foreach d,$(PLUGIN_DIRS),-e ./$(d))
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/mmclinic demo

lint: install
	$(VENV)/bin/ruff check mmclinic plugins tests bench
	$(VENV)/bin/mypy mmclinic

test: lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: install
	$(PY) -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
