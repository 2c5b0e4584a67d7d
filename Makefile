# pra — two commands: `make demo` (build + full disaster-recovery drill) and `make test` (everything).
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: demo test test-rust lint build clean

## Build everything and run the disaster-recovery drill on a scratch embedded store.
demo: build
	target/release/pra drill

build:
	$(CARGO) build --release --workspace

## Every test: formatting, lints, Rust unit/integration/property tests.
test: lint test-rust

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test-rust:
	$(CARGO) test --workspace

clean:
	$(CARGO) clean
