#!/usr/bin/env bash
# Where a boot's time goes, husk vs qemu microvm (the same boots as bench/boot.sh,
# interleaved), from the host kernel's own trace: ftrace's kvm_entry/kvm_exit,
# sched_process_exec and a trace_marker at the agent's ready line. Per boot it prints:
#   setup   launch's exec to the first KVM_RUN (the VMM's own work)
#   guest   first KVM_RUN to the ready line, split into time in the guest and out of it
#   exits   VM exits to the ready line; `ram faults` the guest's first touches of its RAM
#           (nested page faults below 4 GiB outside the IOAPIC/LAPIC), with the slowest
#           one and its 2 MiB region (a slow one is the test bed's zeroing of a page an
#           earlier guest ran code from: see scrub_testbed_memory in bench/lib.sh)
# A diagnostic, not a benchmark: tracing adds its own cost to every exit. Needs root
# (tracefs); runs inside the test bed unless this host's KVM boots a stock guest.
#   bench/trace-boot.sh [PAIRS]        (default 4; TRACE_SCRUB=0: no memory scrub)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

pairs=${1:-4}
out=target/release
require_build bench/trace-boot.sh "$out"

if [ "${HUSK_BENCH_INNER:-}" != 1 ]; then
  results=$(mktemp -d /tmp/husk-trace.XXXXXX)
  trap 'rm -rf "$results"' EXIT
  measure_where bench/trace-boot.sh "$results" "$pairs"
  echo "ran $where; load at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
  exit 0
fi

: "${RESULTS:?}"
[ "${TRACE_SCRUB:-1}" = 1 ] || export HUSK_BENCH_TESTBED=0
t=/sys/kernel/tracing
mountpoint -q "$t" || mount -t tracefs nodev "$t"
echo 0 >"$t/tracing_on"
: >"$t/trace"
echo mono >"$t/trace_clock"
echo 65536 >"$t/buffer_size_kb"
trace_events() { # 1 or 0
  for e in kvm/kvm_entry kvm/kvm_exit sched/sched_process_exec; do echo "$1" >"$t/events/$e/enable"; done
}
trace_events 1
stop_tracing() {
  echo 0 >"$t/tracing_on"
  trace_events 0
}
trap stop_tracing EXIT
echo 1 >"$t/tracing_on"

qemu_microvm_argv "$out"
husk=("$out/husk" vm boot --console /dev/stdout)
for i in $(seq "$pairs"); do
  for vmm in husk qemu; do
    if [ "$vmm" = husk ]; then cmd=("${husk[@]}"); else cmd=("${qemu[@]}"); fi
    scrub_testbed_memory
    echo "START $vmm$i" >"$t/trace_marker"
    seen=""
    while IFS= read -r line; do
      if [ -z "$seen" ] && [[ $line == *HUSK-AGENT-READY* ]]; then
        echo "READY $vmm$i" >"$t/trace_marker"
        seen=1
      fi
    done < <("${cmd[@]}" 2>&1)
    echo "END $vmm$i" >"$t/trace_marker"
  done
done
stop_tracing
trap - EXIT

awk '
  function report() {
    if (name == "") return
    printf "%-7s setup %7.1f ms  guest %7.1f ms (in %7.1f, out %6.1f)  exits %4d  ram faults %2d, slowest %6.1f ms (2 MiB region %d)\n",
      name, (first - exec) * 1000, (ready - first) * 1000, in_g * 1000, out_g * 1000, exits, faults, slow * 1000, slow_region
    name = ""
  }
  / tracing_mark_write: START / { report(); name = $NF; exec = first = ready = last_exit = last_entry = 0
    in_g = out_g = exits = faults = slow = 0; slow_region = -1; done = 0; next }
  / tracing_mark_write: READY / { ready = ts($0); done = 1; next }
  / tracing_mark_write: END / { report(); next }
  name == "" || done { next }
  / sched_process_exec: / && exec == 0 && /husk|qemu/ { exec = ts($0); next }
  / kvm_entry: / {
    now = ts($0)
    if (first == 0) first = now
    if (last_exit) { d = now - last_exit; out_g += d
      if (ram) { faults++; if (d > slow) { slow = d; slow_region = region } } }
    last_entry = now; last_exit = 0; next
  }
  / kvm_exit: / {
    now = ts($0); exits++
    if (last_entry) in_g += now - last_entry
    last_exit = now; ram = 0
    if ($0 ~ /reason npf/) {
      for (k = 1; k <= NF; k++) if ($k == "info2") gpa = hex($(k + 1))
      # RAM: below the MMIO gap at 0xc0000000 (mawk has no hex constants).
      if (gpa < 3221225472) { ram = 1; region = int(gpa / 2097152) }
    }
    next
  }
  function hex(s,   v, i) { v = 0; s = tolower(s); sub(/^0x/, "", s)
    for (i = 1; i <= length(s); i++) v = v * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1
    return v }
  function ts(line) { match(line, /[0-9]+\.[0-9]+: /); return substr(line, RSTART, RLENGTH - 2) + 0 }
  END { report() }
' "$t/trace"
