#!/usr/bin/env bash
# OCI runtimes on one bundle: `husk run` of busybox `true` (create + start + wait + delete:
# one microVM booted, the container built in it, torn down) next to `crun run` and
# `runc run` on the same bundle, and next to `husk vm boot` (boot to the agent, power-off),
# interleaved in one run. Runs natively where this host's KVM boots a stock guest, inside
# the test bed otherwise, and writes its table into docs/benchmarks.md. A runtime whose
# runs fail is reported as failing in the table, not dropped.
#   bench/oci.sh [RUNS]          (default 10)
# HUSK_BENCH_HUSK=PATH times another husk binary (its vmlinux and initramfs.cpio beside it).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

runs=${1:-10}
husk=${HUSK_BENCH_HUSK:-target/release/husk}
out=$(dirname "$husk")
for f in "$husk" "$out/vmlinux" "$out/initramfs.cpio" /bin/busybox /usr/bin/crun /usr/bin/runc; do
  [ -e "$f" ] || { echo "bench/oci.sh: $f is missing: run make first (crun, runc, busybox: integration/podman/setup)" >&2; exit 1; }
done
names=(husk-run crun-run runc-run husk-vm-boot)

if [ "${HUSK_BENCH_INNER:-}" != 1 ]; then
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  results=$(mktemp -d /tmp/husk-bench-oci.XXXXXX)
  trap 'rm -rf "$results"' EXIT
  measure_where bench/oci.sh "$results" "$runs"
  RESULTS=$results
  for n in "${names[@]}"; do [ -s "$results/$n" ] || { echo "bench/oci.sh: no results for $n" >&2; exit 1; }; done
  h=$(ok_median "$results/husk-run"); c=$(ok_median "$results/crun-run")
  r=$(ok_median "$results/runc-run"); b=$(ok_median "$results/husk-vm-boot")
  table=$(mktemp)
  {
    echo "## OCI runtimes on one bundle: \`husk run\` vs \`crun run\`, \`runc run\`, \`husk vm boot\` (bench/oci.sh)"
    echo
    echo "$(date -u +%Y-%m-%d), $runs runs each, interleaved, ran $where."
    echo "This machine's load average at the start: $load. One bundle for all: a busybox-static rootfs and"
    echo "\`runc spec\`'s config.json running \`true\`; \`RUNTIME run --bundle B ID\` = create + start + wait + delete."
    echo "husk's VM: its defaults (no resources in the spec). Goal (issue 4): husk run / husk vm boot <= 1.5."
    [ -z "${HUSK_BENCH_HUSK:-}" ] || echo "husk binary: $HUSK_BENCH_HUSK${HUSK_BENCH_NOTE:+ ($HUSK_BENCH_NOTE)}."
    echo
    echo "| wall ms, launch to exit (median of successful runs) | husk run | crun run | runc run | husk vm boot |"
    echo "|---|---|---|---|---|"
    echo "| | $h | $c | $r | $b |"
    echo
    echo "| husk run / husk vm boot | husk run / crun run | husk run / runc run | runc run / crun run |"
    echo "|---|---|---|---|"
    echo "| $(ratio_of "$h" "$b") | $(ratio_of "$h" "$c") | $(ratio_of "$h" "$r") | $(ratio_of "$r" "$c") |"
    failure_notes "${names[@]}"
  } >"$table"
  publish_table oci "$table"
  exit 0
fi

# Inside (RESULTS: the directory the host side gave): the bundle, then the runs, interleaved.
: "${RESULTS:?}"
bundle=$(mktemp -d /tmp/husk-bench-oci.XXXXXX)
trap 'rm -rf "$bundle"' EXIT
busybox_bundle "$bundle" true
for i in $(seq "$runs"); do
  id=bench-oci-$$-$i
  time_into husk-run "$husk" run --bundle "$bundle" "$id-husk"
  time_into crun-run crun run --bundle "$bundle" "$id-crun"
  time_into runc-run runc run --bundle "$bundle" "$id-runc"
  time_into husk-vm-boot "$husk" vm boot
  echo "run $i: ms/status husk run $(tail -n1 "$RESULTS/husk-run") | crun run $(tail -n1 "$RESULTS/crun-run")" \
    "| runc run $(tail -n1 "$RESULTS/runc-run") | husk vm boot $(tail -n1 "$RESULTS/husk-vm-boot")" >&2
done
# A failed husk run may leave its container's state behind: not on the next bench's way.
for i in $(seq "$runs"); do "$husk" delete --force "bench-oci-$$-$i-husk" >/dev/null 2>&1 || true; done
