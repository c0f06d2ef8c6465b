#!/usr/bin/env bash
# Runs husk's VM-level tests: natively where this host's KVM can boot a stock guest, and
# inside the emulated test bed (tests/testbed/run, one test-host boot for the whole batch)
# otherwise. Same test binaries, same assertions; the summary says which way they ran.
set -euo pipefail
cd "$(dirname "$0")/.."

# Build the test binaries on this machine (the test host only runs them).
mapfile -t exes < <(cargo test --release -p husk-tests --no-run --message-format=json 2>/dev/null |
  grep -o '"executable":"[^"]*"' | sed 's/"executable":"\(.*\)"/\1/')
vm_boot="" host_kvm=""
for e in "${exes[@]}"; do
  case "$(basename "$e")" in
    vm_boot-*) vm_boot=$e ;;
    host_kvm-*) host_kvm=$e ;;
  esac
done
[ -n "$vm_boot" ] && [ -n "$host_kvm" ] || { echo "run-vm-tests: test binaries not built" >&2; exit 1; }

echo "== host checks (on this machine)"
"$host_kvm" --test-threads=1

# One test at a time: boots in the test bed share two emulated CPUs, and the leftover
# checks look at every process.
if reason=$(tests/testbed/native-kvm); then
  where="natively ($reason)"
  echo "== VM tests, natively"
  "$vm_boot" --test-threads=1
else
  where="in the emulated test bed ($reason)"
  echo "== VM tests, in the test bed: $reason"
  tests/testbed/run "$vm_boot" --test-threads=1
fi
echo "VM tests ran $where"
