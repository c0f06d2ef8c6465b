#!/usr/bin/env bash
# Runs husk's VM-level tests: natively where this host's KVM can boot a stock guest, and
# inside the emulated test bed (tests/testbed/run, one test-host boot for the whole batch)
# otherwise. Same test binary, same assertions; the summary says which way they ran.
set -euo pipefail
cd "$(dirname "$0")/.."

# Build the test binary on this machine (the test host only runs it): tests/suites.rs, a
# module per suite. Every module named `vm_*` boots VMs; `host_kvm` checks this host itself.
suites=$(cargo test --release -p husk-tests --test suites --no-run --message-format=json |
  grep -o '"executable":"[^"]*"' | sed 's/"executable":"\(.*\)"/\1/')
[ -x "$suites" ] || { echo "run-vm-tests: the test binary was not built" >&2; exit 1; }
# One filter per VM suite, `vm_NAME::` (a test's name starts with its module's).
mapfile -t vm_suites < <("$suites" --list 2>/dev/null | sed -n 's/^\(vm_[a-z0-9_]*::\).*: test$/\1/p' | sort -u)
[ "${#vm_suites[@]}" -gt 0 ] || { echo "run-vm-tests: no vm_* suite in $suites" >&2; exit 1; }

echo "== host checks (on this machine)"
"$suites" --test-threads=1 host_kvm::

# One test at a time: boots in the test bed share two emulated CPUs, and the leftover
# checks look at every process. All VM suites run in one test-host boot, in one process.
if reason=$(tests/testbed/native-kvm); then
  where="natively ($reason)"
  echo "== VM tests, natively"
  "$suites" --test-threads=1 "${vm_suites[@]}"
else
  where="in the emulated test bed ($reason)"
  echo "== VM tests, in the test bed: $reason"
  tests/testbed/run --timeout 2400 "$suites" --test-threads=1 "${vm_suites[@]}"
fi
echo "VM tests ran $where"
