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

# failed_tests LOG: the names libtest lists as failed (its last "failures:" block).
failed_tests() {
  awk '/^failures:$/ { list = ""; inlist = 1; next }
       inlist && /^    [^ ]/ { list = list substr($0, 5) "\n"; next }
       /^test result:/ { inlist = 0 }
       END { printf "%s", list }' "$1"
}
# failure_output LOG NAME: what libtest printed of test NAME's captured output.
failure_output() {
  awk -v head="---- $2 stdout ----" '$0 == head { on = 1; next }
       on && (/^---- .* stdout ----$/ || /^failures:$/) { exit }
       on' "$1"
}

# testbed_retry RC LOG: after a failed run in the test bed (LOG its output), prints the
# tests that did not pass and succeeds when the test bed's known faults explain the
# failure: the test host crashed (RC 125), or every failed test's output shows husk's
# "triple-faulted".
testbed_retry() {
  local t failed
  if [ "$1" -ne 125 ]; then
    mapfile -t failed < <(failed_tests "$2")
    [ ${#failed[@]} -gt 0 ] || return 1
    for t in "${failed[@]}"; do
      [[ $(failure_output "$2" "$t") == *triple-faulted* ]] || return 1
    done
  fi
  "$suites" --list "${vm_suites[@]}" 2>/dev/null | sed -n 's/: test$//p' |
    grep -vxF -f <(sed -n 's/^test \(.*\) \.\.\. ok$/\1/p' "$2")
}

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
  log=target/vm-tests.log
  rc=0
  tests/testbed/run --timeout 2400 "$suites" --test-threads=1 "${vm_suites[@]}" 2>&1 | tee "$log" || rc=$?
  # The test bed's known faults (tests/testbed/README.md), which qemu's own guests suffer
  # too: a guest that dies of a triple fault, a test host that crashes (exit 125). When
  # the run failed only by them, the tests that did not pass run once more in a fresh
  # test host; a second failure fails the run. Natively there is no retry: a triple fault
  # there is husk's bug.
  if [ $rc -ne 0 ]; then
    rerun=$(testbed_retry "$rc" "$log") || exit $rc
    mapfile -t rerun <<<"$rerun"
    echo "== VM tests: ${#rerun[@]} did not pass because of the test bed's known fault" \
      "($([ "$rc" -eq 125 ] && echo 'the test host crashed' || echo 'a guest triple fault'));" \
      "running them once more in a fresh test host"
    tests/testbed/run --timeout 2400 "$suites" --test-threads=1 --exact "${rerun[@]}"
    echo "== VM tests: these passed on the second run: ${rerun[*]}"
  fi
fi
echo "VM tests ran $where"
