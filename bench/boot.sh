#!/usr/bin/env bash
# Boot benchmark: husk vs qemu microvm, same vmlinux, same initramfs, same agent-ready
# line, interleaved. Runs natively where this host's KVM boots a stock guest, inside the
# test bed otherwise, and writes its table into docs/benchmarks.md.
#   bench/boot.sh [RUNS]          (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

runs=${1:-10}
out=target/release
require_build bench/boot.sh "$out"

if [ "${HUSK_BENCH_INNER:-}" != 1 ]; then
  # Host side: pick where to run, then write the report from the raw results.
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  results=$(mktemp -d /tmp/husk-bench.XXXXXX)
  trap 'rm -rf "$results"' EXIT
  measure_where bench/boot.sh "$results" "$runs"
  col() { awk -v c="$2" '{print $c}' "$results/$1" | median; }
  h_ready=$(col husk 1); q_ready=$(col qemu 1)
  h_exit=$(col husk 2); q_exit=$(col qemu 2)
  h_rss=$(col husk 3); q_rss=$(col qemu 3)
  h_exits=$(median <"$results/husk-exits"); q_exits=$(median <"$results/qemu-exits")
  h_own_exits=$(col husk 5)
  h_guest=$(col husk 7); q_guest=$(col qemu 5)
  h_kernel=$(col husk 8); q_kernel=$(col qemu 6)
  exit_runs=$(wc -l <"$results/husk-exits")
  ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "nan" }'; }
  table=$(mktemp)
  {
    echo "## Boot to the agent's ready line (bench/boot.sh)"
    echo
    echo "$(date -u +%Y-%m-%d), $runs runs each, interleaved, 1 vCPU / 128 MiB, ran $where."
    echo "Same vmlinux and initramfs for both; husk's own breakdown medians:"
    echo "$(col husk 6) ms VMM setup (launch to the first KVM_RUN), $(col husk 9) ms launch to agent ready by husk's own clock, $(col husk 7) ms guest clock at ready."
    echo "Wall times are taken without perf (starting it cost 1.5-3 s in the test bed); VM exits come from $exit_runs more runs each under perf."
    case ${HUSK_BENCH_SCRUB:-1}:$where in
    1:*"test bed"*) echo "Before every boot of either VMM the test host zeroes and frees 256 MiB (scrub_testbed_memory in bench/lib.sh): no guest gets pages an earlier guest ran code from, whose zeroing cost up to 2.5 s per 2 MiB under TCG." ;;
    esac
    echo "This machine's load average at the start: $load (other builds and test beds share its 2 cores)."
    echo
    echo "| | husk | qemu microvm | husk / qemu |"
    echo "|---|---|---|---|"
    echo "| wall ms, launch to agent ready (median) | $h_ready | $q_ready | $(ratio "$h_ready" "$q_ready") |"
    echo "| wall ms, launch to exit (median) | $h_exit | $q_exit | $(ratio "$h_exit" "$q_exit") |"
    echo "| VM exits, whole run (perf, kvm:kvm_exit, median of $exit_runs) | $h_exits | $q_exits | $(ratio "$h_exits" "$q_exits") |"
    echo "| VM exits to agent ready (husk's own count) | $h_own_exits | | |"
    echo "| peak RSS KiB (time -v) | $h_rss | $q_rss | $(ratio "$h_rss" "$q_rss") |"
    echo "| guest clock at agent ready, ms (its CLOCK_BOOTTIME) | $h_guest | $q_guest | $(ratio "$h_guest" "$q_guest") |"
    echo "| guest kernel clock at agent ready, ms (printk time of the line) | $h_kernel | $q_kernel | $(ratio "$h_kernel" "$q_kernel") |"
  } >"$table"
  cat "$table"
  replace_section docs/benchmarks.md boot "$table"
  rm -f "$table"
  exit 0
fi

# Inside: the measurements (RESULTS: the directory the host side gave).
: "${RESULTS:?}"
# The printk timestamp of the ready line (the agent writes it through /dev/kmsg), in ms:
# the guest kernel's sched clock, i.e. kvmclock since the guest set it up.
kernel_clock_at_ready() {
  sed -n 's/.*\[ *\([0-9]*\.[0-9]*\)\] HUSK-AGENT-READY.*/\1/p' "$1" | head -n1 | awk '{printf "%.1f", $1 * 1000}'
}
# The measurements; qemu's command line is husk's default (see qemu_microvm_argv).
qemu_microvm_argv "$out"
for i in $(seq "$runs"); do
  bd=$(mktemp)
  scrub_testbed_memory
  r=$(TTM_LOG=$bd time_to_marker HUSK-AGENT-READY "$out/husk" vm boot --console /dev/stdout)
  own=$(grep vm_exits= "$bd" | tr ' ' '\n' | awk -F= '$1=="vm_exits"{e=$2} $1=="vmm_setup_ms"{s=$2} $1=="guest_ready_ms"{g=$2} $1=="total_ms"{t=$2} END {print e+0, s+0, g+0, t+0}')
  h_kernel=$(kernel_clock_at_ready "$bd")
  rm -f "$bd"
  # ready exit rss status | own: exits setup guest_clock | kernel_clock | own: total
  echo "$r ${own% *} ${h_kernel:-0} ${own##* }" >>"$RESULTS/husk"
  qd=$(mktemp)
  scrub_testbed_memory
  r=$(TTM_LOG=$qd time_to_marker HUSK-AGENT-READY "${qemu[@]}")
  # The guest's own clock at the ready line (CLOCK_BOOTTIME, as husk's guest_ready_ms).
  q_guest=$(grep -o 'boottime_us=[0-9]*' "$qd" | head -n1 | awk -F= '{printf "%.1f", $2 / 1000}')
  q_kernel=$(kernel_clock_at_ready "$qd")
  rm -f "$qd"
  # ready exit rss status guest_clock kernel_clock
  echo "$r ${q_guest:-0} ${q_kernel:-0}" >>"$RESULTS/qemu"
  echo "run $i: husk $(tail -n1 "$RESULTS/husk") | qemu $(tail -n1 "$RESULTS/qemu")" >&2
done
# VM exits: counts, not times, so a few runs each under perf are enough.
for i in $(seq "${EXIT_RUNS:-3}"); do
  scrub_testbed_memory
  count_exits "$out/husk" vm boot >>"$RESULTS/husk-exits"
  scrub_testbed_memory
  count_exits "${qemu[@]}" >>"$RESULTS/qemu-exits"
done
