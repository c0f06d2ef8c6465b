#!/usr/bin/env bash
# The data path's cost: `husk vm run --rootfs DIR -- true` (boot, agent ready, virtio-fs
# mounts, create/start/wait over vsock, shutdown) vs `husk vm boot` (boot to the agent's
# ready line, power-off), interleaved in one run, with husk's own breakdown of where the
# extra time goes. Runs natively where this host's KVM boots a stock guest, inside the
# test bed otherwise, and writes its table into docs/benchmarks.md.
#   bench/run.sh [RUNS]          (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

runs=${1:-10}
out=target/release
require_build bench/run.sh "$out" /bin/busybox

if [ "${HUSK_BENCH_INNER:-}" != 1 ]; then
  # Host side: pick where to run, then write the report from the raw results.
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  results=$(mktemp -d /tmp/husk-bench-run.XXXXXX)
  trap 'rm -rf "$results"' EXIT
  measure_where bench/run.sh "$results" "$runs"
  [ -s "$results/run" ] && [ -s "$results/boot" ] || { echo "bench/run.sh: no results" >&2; exit 1; }
  col() { awk -v c="$2" '{print $c}' "$results/$1" | median; }
  # run: wall status vmm_setup to_ready guest_boot mounts create start run shutdown total
  r_wall=$(col run 1); b_wall=$(col boot 1)
  ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "nan" }'; }
  bad=$(awk '$2 != 0' "$results/run" "$results/boot" | wc -l)
  table=$(mktemp)
  {
    echo "## The data path: \`husk vm run -- true\` vs \`husk vm boot\` (bench/run.sh)"
    echo
    echo "$(date -u +%Y-%m-%d), $runs runs each, interleaved, 1 vCPU / 128 MiB, ran $where."
    echo "This machine's load average at the start: $load (other builds and test beds share its 2 cores)."
    echo "rootfs: busybox-static (virtio-fs); both use husk's vmlinux and initramfs. Goal: ratio <= 1.3."
    [ "$bad" -eq 0 ] || echo "**$bad runs exited non-zero.**"
    echo
    echo "| wall ms, launch to exit (median) | husk vm run -- true | husk vm boot | run / boot |"
    echo "|---|---|---|---|"
    echo "| | $r_wall | $b_wall | $(ratio "$r_wall" "$b_wall") |"
    echo
    echo "Where \`vm run\` spends it (medians of its \`--timings\` line, ms):"
    echo
    echo "| VMM setup | launch to agent ready | guest clock at ready | mount rootfs share | create | start | command ran (wait) | shutdown (request to VM joined) | total |"
    echo "|---|---|---|---|---|---|---|---|---|"
    echo "| $(col run 3) | $(awk '{print $3 + $4}' "$results/run" | median) | $(col run 5) | $(col run 6) | $(col run 7) | $(col run 8) | $(col run 9) | $(col run 10) | $(col run 11) |"
    echo
    echo "\`vm boot\` for comparison: $(col boot 3) ms VMM setup, $(col boot 4) ms launch to agent ready (its own line), guest clock at ready $(col boot 5) ms."
  } >"$table"
  cat "$table"
  replace_section docs/benchmarks.md run "$table"
  rm -f "$table"
  exit 0
fi

# Inside: a busybox rootfs, then the measurements, interleaved.
rootfs=$(mktemp -d /tmp/husk-bench-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
busybox_rootfs "$rootfs"

field() { tr ' ' '\n' | awk -F= -v k="$1" '$1 == k { print $2 }'; }
for i in $(seq "$runs"); do
  log=$(mktemp)
  t0=$(now_ns)
  status=0
  "$out/husk" vm run --timings --rootfs "$rootfs" -- true 2>"$log" || status=$?
  t1=$(now_ns)
  line=$(grep husk-timings: "$log" || true)
  [ $status -eq 0 ] || { echo "run $i: husk vm run failed ($status): $(cat "$log")" >&2; }
  echo "$(( (t1 - t0) / 1000000 )) $status $(for k in vmm_setup_ms to_ready_ms guest_boot_ms mounts_ms create_ms start_ms run_ms shutdown_ms total_ms; do v=$(field $k <<<"$line"); printf '%s ' "${v:-0}"; done)" >>"$RESULTS/run"
  rm -f "$log"

  t0=$(now_ns)
  status=0
  line=$("$out/husk" vm boot 2>&1) || status=$?
  t1=$(now_ns)
  [ $status -eq 0 ] || { echo "run $i: husk vm boot failed ($status): $line" >&2; }
  echo "$(( (t1 - t0) / 1000000 )) $status $(field vmm_setup_ms <<<"$line") $(field total_ms <<<"$line") $(field guest_ready_ms <<<"$line")" >>"$RESULTS/boot"
  echo "run $i: vm run $(tail -n1 "$RESULTS/run") | vm boot $(tail -n1 "$RESULTS/boot")" >&2
done
