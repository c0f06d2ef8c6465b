#!/usr/bin/env bash
# Runs husk's VM-level tests: natively where this host's KVM can boot a stock guest, and
# inside the emulated test bed (tests/testbed/run, one test-host boot for the whole batch)
# otherwise. Same test binaries, same assertions; the summary says which way they ran.
set -euo pipefail
cd "$(dirname "$0")/.."

# Build the test binaries on this machine (the test host only runs them). Every test
# target named `vm_*` boots VMs; `host_kvm` checks this host itself.
mapfile -t exes < <(cargo test --release -p husk-tests --no-run --message-format=json 2>/dev/null |
  grep -o '"executable":"[^"]*"' | sed 's/"executable":"\(.*\)"/\1/')
vm_exes=() host_kvm=""
for e in "${exes[@]}"; do
  case "$(basename "$e")" in
    vm_*) vm_exes+=("$e") ;;
    host_kvm-*) host_kvm=$e ;;
  esac
done
[ "${#vm_exes[@]}" -gt 0 ] && [ -n "$host_kvm" ] || { echo "run-vm-tests: test binaries not built" >&2; exit 1; }

echo "== host checks (on this machine)"
"$host_kvm" --test-threads=1

# One test at a time: boots in the test bed share two emulated CPUs, and the leftover
# checks look at every process. All VM test binaries run in one test-host boot; each one
# runs even if an earlier one failed, and the batch fails if any did.
batch='rc=0; for t in "$@"; do echo "== $(basename "$t")"; "$t" --test-threads=1 || rc=1; done; exit $rc'
if reason=$(tests/testbed/native-kvm); then
  where="natively ($reason)"
  echo "== VM tests, natively"
  bash -c "$batch" vm-tests "${vm_exes[@]}"
else
  where="in the emulated test bed ($reason)"
  echo "== VM tests, in the test bed: $reason"
  tests/testbed/run --timeout 2400 bash -c "$batch" vm-tests "${vm_exes[@]}"
fi
echo "VM tests ran $where"
