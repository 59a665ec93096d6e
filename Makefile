# Every target creates or reuses .venv and installs what it needs: on a fresh clone `make demo` and
# `make test` are the only two commands.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml | sha256sum | cut -c1-12)
export FEDBUS_DATA_DIR ?= $(abspath ../shared/datasets)
export OMP_NUM_THREADS ?= 1
PROTO_DIR := contracts/proto

.PHONY: install demo test test-compose lint bench bench-full proto clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

demo: install
	$(VENV)/bin/fedbus run --config examples/demo.toml --out runs/demo

test: install
	$(PY) -m pytest -q -p no:cacheprovider --durations=15

# The compose stack, and the Kubernetes dev overlay under `podman kube play`, through podman-stack (slow:
# builds the image); .ci/run calls it after `make test`.
test-compose: install
	$(PY) -m pytest -q -p no:cacheprovider -m compose tests/compose tests/k8s

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy fedbus contracts services workers broker persistence ops benchmarks
	$(VENV)/bin/lint-imports

bench: install
	$(PY) -m benchmarks.run --profile quick --out docs/benchmarks.md

# The real sizes (full MNIST, 15 rounds, latency at 10/25/50 clients): about 3 hours on 2 cores.
bench-full: install
	$(PY) -m benchmarks.run --profile full --out docs/full/benchmarks.md

# Regenerate the gRPC stubs from the .proto; a test checks they are in sync.
proto: install
	$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. \
		$(PROTO_DIR)/fedbus/v1/federation.proto

clean:
	rm -rf $(VENV) runs build *.egg-info
