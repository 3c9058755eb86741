# raftkv: `make run` starts a local 3-node cluster, `make test` runs the suite.
# Both create the virtualenv and install everything they need on a fresh machine.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
PROTOS := $(wildcard proto/raftkv/v1/*.proto) $(wildcard proto/etcd/*/*.proto)

.PHONY: all venv proto run test test-long test-fast sim lint clean jepsen jepsen-witness bench

all: venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PIP) install -q -e '.[test,jepsen]'
	touch $(STAMP)

venv: $(STAMP) proto

# Stubs are generated into raftkv/proto/ from proto/ and never edited or committed.
proto: $(STAMP) $(PROTOS)
	$(PY) -m raftkv.proto.generate

run: venv
	$(VENV)/bin/raftkv dev

# The simulator: the real host and layers over simulated time, network and disks, Raft's invariants and
# the clients' histories checked; 1,000 seeds each drawing its own swarm, then 200 of the Figure 8
# profile, then witness configurations (2 data + 1 witness, 4 data + 1 witness). A failing seed is shrunk
# and prints the command that replays it.
sim: venv
	$(PY) -m raftkv.sim --seeds 1000
	$(PY) -m raftkv.sim --figure8 --seeds 200
	$(PY) -m raftkv.sim --nodes 3 --witnesses 1 --seeds 200
	$(PY) -m raftkv.sim --nodes 5 --witnesses 1 --seeds 100

# The suite mostly waits on real processes (elections, restarts, timeouts), so it runs on TEST_WORKERS
# pytest-xdist workers; the network-namespace tests form one group and run one after another
# (tests/conftest.py). Bytecode is cached (__pycache__, ignored by git) even where the environment sets
# PYTHONDONTWRITEBYTECODE: otherwise every `raftkv serve` and `kv` a test starts compiles raftkv from
# source again, and every worker rewrites every test module's asserts again.
# Two workers on CI's two cores: three, on a loaded machine, starved nodes into spurious elections
# (200 ms election timeouts) in tests that assert a leader keeps leading.
TEST_WORKERS ?= 2
test: venv
	bash tests/install_system_deps.sh
	env -u PYTHONDONTWRITEBYTECODE $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup -m "not slow"

# The soak variants (marked `slow`) of tests that `make test` runs shorter, e.g. kill -9 of every node
# for many rounds.
test-long: venv
	bash tests/install_system_deps.sh
	env -u PYTHONDONTWRITEBYTECODE $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup -m slow

# The same tests as `make test`, in one process (no workers).
test-fast: venv
	$(PY) -m pytest -q -m "not slow"

# The partition suite's full matrix: every nemesis x every workload on nodes in network namespaces
# (root), then the witness topologies (below). One progress line per run; results (histories, summaries,
# plots) under results/.
JEPSEN_ARGS ?= --time-limit 15
jepsen: venv
	bash tests/install_system_deps.sh
	$(PY) -m tests.jepsen --matrix $(JEPSEN_ARGS) --out results/matrix-$$(date +%Y%m%d-%H%M%S)
	$(MAKE) jepsen-witness

# Witness topologies (2 data + 1 witness, 4 data + 1 witness) under kill -9 of any data node, kills,
# pauses and partitions, checked for lost acknowledged writes (~15 minutes; also the tail of `make jepsen`).
WITNESS_NEMESES ?= kill-data,kill,pause,partition-halves
jepsen-witness: venv
	bash tests/install_system_deps.sh
	for t in 2+1 4+1; do \
	  $(PY) -m tests.jepsen --matrix --topology $$t --workloads register,ack-levels --nemeses $(WITNESS_NEMESES) \
	    $(JEPSEN_ARGS) --out results/witness-$$t-$$(date +%Y%m%d-%H%M%S) || exit 1; \
	done

# Benchmarks against a local raftkv cluster and a local etcd (installed from Debian when missing).
# Never part of `make test`. BENCH_ARGS passes options, e.g. make bench BENCH_ARGS="run --duration 20".
BENCH_STAMP := $(VENV)/.bench-installed
BENCH_ARGS ?= run

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PIP) install -q -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: venv $(BENCH_STAMP)
	bash benchmarks/install_etcd.sh
	$(PY) -m benchmarks $(BENCH_ARGS)

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build dist *.egg-info raftkv/proto/*_pb2*.py raftkv/proto/etcd
