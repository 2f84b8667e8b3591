# The two commands of README.md: `make up` (install, run shoal's main job) and `make test`
# (install everything the tests need, then run the checks and every test).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
APT_TEST_PKGS := util-linux curl iproute2 redis-server postgresql rclone
APT_BENCH_PKGS := fio nginx-extras wrk memcached swift swift-proxy swift-object swift-container \
	swift-account

.PHONY: install install-test install-bench up test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .

# Debian packages, installed only when missing (as root, or through sudo).
APT := $(if $(filter 0,$(shell id -u)),,sudo )apt-get

install-test: $(BIN)/python
	@command -v losetup >/dev/null && command -v curl >/dev/null && command -v ss >/dev/null \
		&& command -v redis-server >/dev/null && command -v rclone >/dev/null \
		&& ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
		|| ($(APT) update -qq && $(APT) install -y -qq $(APT_TEST_PKGS))
	$(BIN)/pip install -q -e '.[test]'

install-bench: $(BIN)/python
	@command -v fio >/dev/null && command -v wrk >/dev/null && command -v nginx >/dev/null \
		&& command -v memcached >/dev/null && command -v swift-proxy-server >/dev/null \
		&& command -v swift-object-server >/dev/null && command -v swift-container-server >/dev/null \
		&& command -v swift-account-server >/dev/null \
		|| ($(APT) update -qq && $(APT) install -y -qq $(APT_BENCH_PKGS))

# shoal's main job: a local cluster (a master and 3 daemons under ./shoal-data, TLS on, and
# the HTTP gateway on port 3000) until Ctrl-C; the data is kept for the next `make up`.
up: install
	$(BIN)/shoal up

lint:
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

# The tests mostly wait (on daemons, masters, fsync, recovery): four at once, a file each,
# fit 2 cores (about 3.5 min here against 9 one by one); the slowest are listed at the end.
test: install-test lint
	$(BIN)/pytest -q -p no:cacheprovider -n 4 --dist loadfile --durations=15 tests

bench: install-bench
	$(BIN)/python -m bench.engine
	$(BIN)/python -m bench.daemon
	$(BIN)/python -m bench.replication
	$(BIN)/python -m bench.http
	$(BIN)/python -m bench.s3
	$(BIN)/python -m bench.cli

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
