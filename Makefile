# pra — two commands: `make demo` (build + full disaster-recovery drill) and `make test` (everything).
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never
# apt-get needs root: use sudo when we are not.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

VENV := .venv
PY := $(VENV)/bin/python
# Reinstalled when the list changes, so an existing .venv gets what was added to it. Defined up
# here: a rule's prerequisites are expanded as make reads it, so rules above a later definition
# saw an empty $(VENV_DEPS) and test-rust ran before moto was installed.
VENV_DEPS := $(VENV)/.requirements-installed

FUZZ_TARGETS := lock_file store_url backup_name
# Seconds per fuzz target: a short run in `make test`, a long one in `make fuzz`.
FUZZ_SECONDS ?= 10

.PHONY: test-monitoring bench-scale bench-scale-short demo build libpra install deb test-deb wheel test lint test-rust test-c test-go test-python test-deploy fuzz fuzz-short cargo-fuzz header readme apt-tools clean

## Build everything and run the disaster-recovery drill on a scratch embedded store.
demo: build
	target/release/pra drill

build: apt-tools
	$(CARGO) build --release --workspace
	$(MAKE) --no-print-directory libpra LIBPRA_PROFILE=release

## The C library under its C name: libpra.so (versioned: libpra.so.0.1.0, soname libpra.so.0.1)
## and libpra.a in target/debug (LIBPRA_PROFILE=release: target/release). The Rust crate is
## pra_ffi (so that it does not shadow the `pra` package), so cargo writes libpra_ffi.*; the
## copies are what C and Go link (-lpra).
LIBPRA_PROFILE ?= debug
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
SOVERSION := $(shell v=$(VERSION); major=$${v%%.*}; rest=$${v#*.}; \
  if [ "$$major" = 0 ]; then echo 0.$${rest%%.*}; else echo $$major; fi)
# What libpra.a needs beside itself, as `rustc --print native-static-libs` lists it.
LIBS_PRIVATE := -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
LIBPRA_DIR = target/$(LIBPRA_PROFILE)
libpra:
	$(CARGO) build -p pra-ffi $(if $(filter release,$(LIBPRA_PROFILE)),--release)
	cp -f $(LIBPRA_DIR)/libpra_ffi.so $(LIBPRA_DIR)/libpra.so.$(VERSION)
	ln -sf libpra.so.$(VERSION) $(LIBPRA_DIR)/libpra.so.$(SOVERSION)
	ln -sf libpra.so.$(SOVERSION) $(LIBPRA_DIR)/libpra.so
	cp -f $(LIBPRA_DIR)/libpra_ffi.a $(LIBPRA_DIR)/libpra.a

## Installs the C library (libpra.so.$(VERSION) with its soname and dev links, libpra.a),
## include/pra.h, pra.pc for pkg-config, and the `pra` command under PREFIX (default
## /usr/local; DESTDIR for staging). Release builds unless LIBPRA_PROFILE=debug.
PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
BINDIR ?= $(PREFIX)/bin
install: LIBPRA_PROFILE = release
install: libpra
	$(CARGO) build --bin pra $(if $(filter release,$(LIBPRA_PROFILE)),--release)
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(BINDIR)
	install -m 0755 $(LIBPRA_DIR)/libpra.so.$(VERSION) $(DESTDIR)$(LIBDIR)/
	ln -sf libpra.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libpra.so.$(SOVERSION)
	ln -sf libpra.so.$(SOVERSION) $(DESTDIR)$(LIBDIR)/libpra.so
	install -m 0644 $(LIBPRA_DIR)/libpra.a $(DESTDIR)$(LIBDIR)/
	$(if $(filter release,$(LIBPRA_PROFILE)),strip --strip-debug $(DESTDIR)$(LIBDIR)/libpra.a)
	install -m 0644 include/pra.h $(DESTDIR)$(INCLUDEDIR)/
	install -m 0755 $(LIBPRA_DIR)/pra $(DESTDIR)$(BINDIR)/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' \
	  -e 's|@VERSION@|$(VERSION)|' -e 's|@LIBS_PRIVATE@|$(LIBS_PRIVATE)|' \
	  pra-ffi/pra.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/pra.pc

## Every test: formatting, lints, Rust (unit, integration, property, crash, drill), C, Go,
## a short nemesis campaign on every store (and the broken build its checker must catch),
## Python (module, stubs, Flask app).
test: lint test-rust test-c test-go test-python test-deploy test-monitoring test-deb fuzz-short nemesis-short bench-scale-short bench-scale-etcd-short

lint: apt-tools
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	# The smallest build users may choose: no etcd client, no database drivers.
	$(CARGO) clippy --bin pra --no-default-features -- -D warnings

## Includes the etcd tests: the fixture starts Debian's etcd-server on loopback ports; and the
## offsite backup tests (tests/offsite.rs), whose fixture starts moto's S3 server from .venv.
test-rust: apt-tools $(VENV_DEPS)
	$(CARGO) test --workspace

## The C ABI from C: -Wall -Werror, libpra.so and libpra.a (built by run.sh with the test-only
## feature test-panic), valgrind.
test-c: apt-tools
	$(CARGO) build --bin pra
	tests/c/run.sh

## The growth table of issue 19 (BENCHMARKS.md): SQLite stores of 1 k, 100 k and 10 M runs and of
## 1 k / 100 k journal entries against an empty one, then a year at 200 jobs/min; then
## benches/scale_etcd.py, the same on etcd, when it exists. Long (≈ 30 min); ≈ 3 GB of scratch
## disk under TMPDIR.
bench-scale:
	$(CARGO) build --bin pra
	python3 benches/scale.py --year
	if [ -f benches/scale_etcd.py ]; then python3 benches/scale_etcd.py; fi

## In `make test`: the scale benchmark's bulk loader on 1,000 runs and entries, and the store it
## builds checked against its own rows (counters, journal chain).
bench-scale-short:
	$(CARGO) build --bin pra
	python3 benches/scale.py --check-only

## The C ABI from Go (cgo), with Debian's Go toolchain, built through pkg-config against libpra
## installed (debug build) in a scratch prefix.
GO_PREFIX := $(CURDIR)/target/go-prefix
test-go: apt-tools
	rm -rf $(GO_PREFIX)
	$(MAKE) --no-print-directory install PREFIX=$(GO_PREFIX) LIBPRA_PROFILE=debug
	PREFIX=$(GO_PREFIX) examples/go/run.sh

## The Python module, from the wheel `make wheel` builds, installed into a venv this target
## creates: its stubs (mypy.stubtest), its tests and the seed's Flask app; then the same wheel in
## fresh venvs of the other CPythons here (test-wheel).
test-python: apt-tools $(VENV_DEPS) wheel
	$(CARGO) build --bin pra
	# The distribution was called `pra` before: its per-version extension would shadow the abi3 one.
	$(PY) -m pip uninstall --quiet --yes pra pra-failover 2>/dev/null || true
	$(PY) -m pip install --quiet --no-deps $(WHEEL_DIR)/pra_failover-*.whl
	$(PY) -m mypy.stubtest pra
	PRA_BIN=$(CURDIR)/target/debug/pra $(PY) -m pytest -q pra-py/tests examples/flask-app/tests
	pra-py/tests/wheel.sh $(WHEEL_DIR)

## The wheel users install: `pra-failover` (import pra), abi3 (one wheel for CPython >= 3.9),
## manylinux_2_28 (glibc 2.28: RHEL 8, Debian 10, Ubuntu 20.04) — linked by zig, from PyPI's
## ziglang, against that glibc without a container — and stripped. Into target/wheels.
WHEEL_DIR := target/wheels
WHEEL_TARGET := $(shell uname -m)-unknown-linux-gnu
wheel: apt-tools $(VENV_DEPS)
	rm -f $(WHEEL_DIR)/pra_failover-*.whl
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/maturin build --release --locked --zig \
	  --compatibility manylinux_2_28 --target $(WHEEL_TARGET) -i $(PY) -m pra-py/Cargo.toml \
	  -o $(WHEEL_DIR)

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV_DEPS): pra-py/requirements-dev.txt | $(PY)
	$(PY) -m pip install --quiet -r pra-py/requirements-dev.txt
	touch $@

## The Debian package (packaging/deb/build.sh, dpkg-deb): target/deb/pra_VERSION_ARCH.deb from the
## release binary.
deb: build
	packaging/deb/build.sh target/release/pra target/deb

## The alert rules (promtool check + test rules, from Debian's prometheus package), the Grafana
## dashboard, and that both name only metrics pra writes (examples/monitoring/check.sh).
test-monitoring: apt-tools
	examples/monitoring/check.sh

## Builds a .deb from the debug binary, installs it with dpkg, uses it and purges it (root).
test-deb:
	$(CARGO) build --bin pra
	packaging/deb/test.sh target/debug/pra

## The container image and the Kubernetes manifests: hadolint on the Dockerfile (the engine
## that would build it is not needed); the manifests' own tests are in tests/deploy.rs.
test-deploy: $(VENV_DEPS)
	$(VENV)/bin/hadolint --no-color examples/container/Dockerfile

## Fuzz the lock-file parser, store URLs and backup names (cargo-fuzz, libFuzzer + ASan).
## The toolchain is stable: RUSTC_BOOTSTRAP lets cargo-fuzz use its nightly-only flags.
## New inputs go to a scratch corpus; the committed seeds in fuzz/corpus stay as they are.
fuzz-short: cargo-fuzz
	@for t in $(FUZZ_TARGETS); do \
	  scratch=$$(mktemp -d); \
	  echo "== fuzz $$t ($(FUZZ_SECONDS) s)"; \
	  (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run $$t $$scratch corpus/$$t -- -max_total_time=$(FUZZ_SECONDS)) 2>&1 \
	    | grep -E '^Done|panicked|SUMMARY|crash-|^error' ; status=$${PIPESTATUS[0]}; \
	  rm -rf $$scratch; [ $$status = 0 ] || exit $$status; \
	done

## A long fuzzing run: make fuzz FUZZ_SECONDS=3600
fuzz: FUZZ_SECONDS = 600
fuzz: fuzz-short

cargo-fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked

## Regenerate include/pra.h with the pinned cbindgen (then commit it).
header: apt-tools
	PRA_BLESS_HEADER=1 $(CARGO) test -p pra-ffi --test header

## Redraw README.md's plan diagram from the plan's table (then commit it).
readme:
	PRA_BLESS_README=1 $(CARGO) test -p pra-core --test readme

## Debian packages the build and the tests need, installed only when missing: protoc builds the
## etcd client's gRPC code; etcd-server is the real etcd the tests start; faketime skews a
## wrapper's clock in tests/runs.rs; cron is the Debian cron tests/runs.rs runs under `pra follow`;
## PostgreSQL and MariaDB are the servers the fences at the data are tested against
## (pra-py/tests/servers.py starts them in scratch directories; the packages' own services are
## not used).
apt-tools:
	@missing=""; \
	command -v protoc >/dev/null || missing="$$missing protobuf-compiler"; \
	command -v etcd >/dev/null || missing="$$missing etcd-server"; \
	command -v go >/dev/null || missing="$$missing golang-go"; \
	command -v valgrind >/dev/null || missing="$$missing valgrind"; \
	command -v cc >/dev/null || missing="$$missing gcc libc6-dev"; \
	command -v faketime >/dev/null || missing="$$missing faketime"; \
	[ -x /usr/sbin/cron ] || missing="$$missing cron"; \
	command -v bindfs >/dev/null || missing="$$missing bindfs"; \
	[ -e /usr/include/sqlite3.h ] || missing="$$missing libsqlite3-dev"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	[ -x /usr/sbin/mariadbd ] || missing="$$missing mariadb-server"; \
	command -v pkg-config >/dev/null || missing="$$missing pkg-config"; \
	command -v objdump >/dev/null || missing="$$missing binutils"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v haproxy >/dev/null || missing="$$missing haproxy"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

clean:
	$(CARGO) clean

## The nemesis suite (tests/nemesis): two sites of real processes on every store (SQLite, lock
## file, etcd with 1 and 3 members), failovers and failbacks, faults from a seeded schedule, and
## an independent checker. NEMESIS_MINUTES in all, split across the stores; NEMESIS_SEED replays
## a campaign's schedule. The report is target/nemesis/report.md (and report.json).
NEMESIS_MINUTES ?= 30
NEMESIS_SEED ?=
NEMESIS_OUT ?= target/nemesis
NEMESIS_SEED_ARG = $(if $(NEMESIS_SEED),--seed $(NEMESIS_SEED))

.PHONY: nemesis nemesis-short nemesis-broken

nemesis: apt-tools
	$(CARGO) build --bin pra
	python3 tests/nemesis/campaign.py --minutes $(NEMESIS_MINUTES) $(NEMESIS_SEED_ARG) \
	  --pra target/debug/pra --out $(NEMESIS_OUT)

## A short campaign (30 s per store, about 2.5 min with start and stop), then the broken-drain
## build that the checker must catch (about 1.7 min): about 4 min in all on 2 cores.
nemesis-short: apt-tools
	$(CARGO) build --bin pra
	python3 tests/nemesis/campaign.py --minutes 2 $(NEMESIS_SEED_ARG) \
	  --pra target/debug/pra --out target/nemesis-short
	$(MAKE) nemesis-broken

## The checker must FAIL on a build whose drain waits for nothing (feature
## nemesis-broken-drain, built apart in target/broken): this target succeeds only if the
## checker reports overlapping work of one job on two sites. Fewer faults (one per 8 s on
## average) leave more flips to catch: under the full nemesis a 30 s run can miss it.
nemesis-broken: apt-tools
	$(CARGO) build --bin pra --features nemesis-broken-drain --target-dir target/broken
	python3 tests/nemesis/campaign.py --minutes 1.5 --stores sqlite,etcd1 --expect-anomaly \
	  --fault-interval 8 \
	  $(NEMESIS_SEED_ARG) --pra target/broken/debug/pra --out target/nemesis-broken

# The etcd growth table of issue 19 (benches/scale_etcd.py: its own etcd, 0 / 100 k / 1 M runs
# of history loaded as pra leaves them; about 3 minutes and 0.5 GB of scratch disk).
# SIZES=0,1000 for a short run.
# bench-scale-etcd-short (in make test, a few seconds): 1 000 runs, so that the loader keeps
# up with the key layout — the drain, metrics and failover must succeed on what it loads.
.PHONY: test-monitoring bench-scale-etcd bench-scale-etcd-short
bench-scale-etcd:
	$(CARGO) build --bin pra
	python3 benches/scale_etcd.py

bench-scale-etcd-short: apt-tools
	$(CARGO) build --bin pra
	SIZES=0,1000 python3 benches/scale_etcd.py
