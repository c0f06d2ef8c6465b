# husk: `make` builds everything (guest kernel, initramfs, release binaries), installing
# what it needs through apt on a fresh Debian 12; `make test` runs the whole suite (what
# CI runs); `make install PREFIX=...` installs it.

CARGO    ?= cargo
PREFIX   ?= /usr/local
OUT      := target/release
# The agent is PID 1 of the guest: a static binary, small (its size is boot time).
AGENT_TARGET := x86_64-unknown-linux-gnu
AGENT    := target/$(AGENT_TARGET)/agent/husk-agent

.PHONY: all deps husk agent guest-tests kernel initramfs test lint unit-test cli-test kernel-check vm-test podman-test vm-and-podman-test install clean

all: husk kernel initramfs

deps:
	@scripts/install-deps.sh

husk: deps
	@echo "husk: building the runtime (release)" >&2
	$(CARGO) build --release -p husk

agent:
	@echo "husk: building the guest agent (static)" >&2
	CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS='-C target-feature=+crt-static' \
	  $(CARGO) build --profile agent --target $(AGENT_TARGET) -p husk-agent

# Static probe programs the VM tests boot as /init (tests/guest).
guest-tests:
	CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS='-C target-feature=+crt-static' \
	  $(CARGO) build --profile agent --target $(AGENT_TARGET) -p husk-guest-tests

kernel: deps
	kernel-config/build.sh $(OUT)

initramfs: husk agent
	$(OUT)/husk-mkinitramfs $(AGENT) $(OUT)/initramfs.cpio

test: all lint unit-test cli-test kernel-check
	@$(MAKE) --no-print-directory vm-and-podman-test

# The VM suites and the podman suite. In the test bed each one has a test host of its own
# and the two run side by side: neither keeps both cores busy, so side by side each takes
# ~1.5x its time alone, ~1.5 min less than one after the other. Each one's output follows
# when it ends. Natively they run one after the other: the leftover checks of each look
# at every process on the host.
vm-and-podman-test: all guest-tests
	@if tests/testbed/native-kvm >/dev/null; then \
	  $(MAKE) --no-print-directory vm-test podman-test; \
	else \
	  echo "husk: the VM suites and the podman suite run side by side, a test host each;" \
	    "each one's output follows when it ends (~14 min on 2 cores)" >&2; \
	  $(MAKE) --no-print-directory -j2 --output-sync=target vm-test podman-test; \
	fi

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Library and binary unit tests, plus the agent's and the protocol's own test targets
# (real processes, chroots into a busybox rootfs: they need root), and the check that
# man/ matches the CLI (runtime/tests/man.rs). One cargo call: one dependency build.
# husk-tests runs the built binaries (cli-test, vm-test).
unit-test:
	$(CARGO) test --workspace --exclude husk-tests --lib --bins --tests

# The runc-compatible CLI through the release binary, natively (no VM).
cli-test: husk
	$(CARGO) test --release -p husk-tests --test suites -- cli_oci::

kernel-check: kernel
	kernel-config/check-config.sh kernel-config/husk.config $(OUT)/vmlinux.config

vm-test: all guest-tests
	tests/run-vm-tests.sh

# podman driving husk (integration/podman/: setup, which installs podman & co. by apt, +
# the bats suite), natively or in one test-host boot as for vm-test (9-14 min in the test
# bed on 2 cores: alone, and beside the VM suites). PODMAN_RUNTIME=crun (or runc) runs
# the same suite with podman's usual runtime, to check the suite itself. The test bed is stopped after 40 minutes: a hung
# test host fails the run instead of eating CI's time.
PODMAN_RUNTIME ?= husk
podman-test: all
	integration/podman/run --runtime $(PODMAN_RUNTIME) --timeout 2400

install: all
	install -D -m 0755 $(OUT)/husk $(DESTDIR)$(PREFIX)/bin/husk
	install -D -m 0644 $(OUT)/vmlinux $(DESTDIR)$(PREFIX)/share/husk/vmlinux
	install -D -m 0644 $(OUT)/initramfs.cpio $(DESTDIR)$(PREFIX)/share/husk/initramfs.cpio
	install -d $(DESTDIR)$(PREFIX)/share/man/man8
	install -m 0644 man/*.8 $(DESTDIR)$(PREFIX)/share/man/man8/

clean:
	$(CARGO) clean
