# citygate — every set-up step lives here, so a fresh Debian / Raspberry Pi OS machine
# with python3 needs only `make demo` or `make test`.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: help venv test lint typecheck pytest demo bench soak fuzz mosquitto postgresql rabbitmq fleet clean install uninstall wheels

help:
	@echo "make demo   set up and run the zero-setup demo (simulators, broker, agent, live view)"
	@echo "make test   set up and run every test (ruff, mypy, pytest with real Mosquitto, PostgreSQL, RabbitMQ)"
	@echo "make bench  performance figures (throughput, CPU per reading, RSS, latency)"
	@echo "make fleet  1,000 gateways through a 3-node RabbitMQ cluster into PostgreSQL, a node killed (FLEET_ARGS)"
	@echo "make fuzz   fuzz every decoder and framer for FUZZ_SECONDS (60) each; findings in build/fuzz/"

venv: $(STAMP)

$(STAMP): pyproject.toml hardware-sim/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "citygate needs Python >= 3.11 (found $$($(PYTHON) --version))"; exit 1; }
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq python3-venv; \
		else echo "python3-venv is missing: run  sudo apt-get install python3-venv"; exit 1; fi; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,demo,sink]' -e ./hardware-sim
	@touch $(STAMP)

mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || { \
		if [ "$$(id -u)" = 0 ]; then echo "installing mosquitto (Debian package) for the tests"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; \
		else echo "the tests need a real Mosquitto broker: run  sudo apt-get install mosquitto"; exit 1; fi; }

# The sink's tests start their own PostgreSQL cluster (tests/support/postgres.py).
postgresql:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then echo "installing postgresql (Debian package) for the tests"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
		else echo "the tests need PostgreSQL: run  sudo apt-get install postgresql"; exit 1; fi; }

# The fleet tests start their own 3-node RabbitMQ cluster (tests/support/rabbitmq.py); the
# package's own service is stopped and disabled (the tests never use it).
rabbitmq:
	@[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || { \
		if [ "$$(id -u)" = 0 ]; then echo "installing rabbitmq-server (Debian package) for the fleet tests"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null; \
			systemctl disable --now rabbitmq-server >/dev/null 2>&1 || service rabbitmq-server stop >/dev/null 2>&1 || true; \
		else echo "the fleet tests need RabbitMQ: run  sudo apt-get install rabbitmq-server"; exit 1; fi; }

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m tests.tools.imports

typecheck: venv
	$(PY) -m tests.tools.typecheck

pytest: venv mosquitto postgresql rabbitmq
	$(VENV)/bin/pytest -q

test: lint typecheck pytest

demo: venv
	$(VENV)/bin/citygate demo $(DEMO_ARGS)

bench: venv mosquitto
	$(PY) -m tests.bench

# A fleet through a clustered broker into PostgreSQL, a node killed midway; prints the figures.
# FLEET_ARGS: --gateways N --seconds S --short --broker mosquitto (see python -m tests.fleet -h).
fleet: venv mosquitto postgresql rabbitmq
	$(PY) -m tests.fleet $(FLEET_ARGS)

# The long fault variants (20 SIGKILLs, 30 s broker outage, 10 restarts in 60 s, …).
soak: venv mosquitto
	$(PY) -m tests.faults.soak

# Every decoder, framer and the config loader under a fuzzer, FUZZ_SECONDS each: atheris
# (coverage-guided) where a wheel exists for this platform, else hypothesis at a large budget.
# Findings: build/fuzz/<target>/crash-* / slow-* (exit 1). The short run is in `make test`.
FUZZ_SECONDS ?= 60
fuzz: venv
	@$(PY) -c 'import atheris' 2>/dev/null || \
		$(PY) -m pip install --quiet --only-binary=atheris -e '.[fuzz]' 2>/dev/null || \
		echo "no atheris wheel for this platform: fuzzing with hypothesis instead"
	$(PY) -m tests.fuzz --seconds $(FUZZ_SECONDS)

# Install as a service into /opt/citygate (root): `make install`, or offline with
# `make install WHEELS=DIR` where DIR was made by `make wheels WHEELS=DIR` on a connected machine.
install:
	systemd/install.sh install $(if $(WHEELS),--wheels $(WHEELS))

uninstall:
	systemd/install.sh uninstall

wheels:
	systemd/install.sh wheels $(or $(WHEELS),dist/wheels)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache var
