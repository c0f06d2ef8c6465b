#!/usr/bin/env bash
# podman with husk, crun and runc, interleaved in one run:
#   `podman run --rm --network none localhost/busybox true`
#   `podman exec CTR true` (one long-running container per runtime)
#   `RUNTIME run --bundle B ID` on a bundle of the same busybox rootfs, without podman
# so that what podman adds on top of each runtime shows beside it (issue 5: podman's own
# cost is not husk's to hide). Runs natively where this host's KVM boots a stock guest,
# inside the test bed otherwise (podman's store there as the suite has it, see
# integration/podman/lib.sh), and writes its table into docs/benchmarks.md. A runtime whose
# runs fail is reported as failing in the table, not dropped.
#   bench/podman.sh [RUNS]          (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
. integration/podman/lib.sh

runs=${1:-10}
out=target/release
runtimes=(husk crun runc)
names=()
for rt in "${runtimes[@]}"; do names+=("podman-run-$rt" "podman-exec-$rt" "oci-run-$rt"); done

if [ "${HUSK_BENCH_INNER:-}" != 1 ]; then
  require_build bench/podman.sh "$out"
  integration/podman/setup
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  results=$(mktemp -d /tmp/husk-bench-podman.XXXXXX)
  trap 'rm -rf "$results"' EXIT
  # The inner side needs to know which podman store layout applies (measure_where decides
  # the same way).
  podman_where
  export HUSK_PODMAN_WHERE=$where
  measure_where bench/podman.sh "$results" "$runs"
  RESULTS=$results
  for n in "${names[@]}"; do [ -s "$results/$n" ] || { echo "bench/podman.sh: no results for $n" >&2; exit 1; }; done
  declare -A m
  for n in "${names[@]}"; do m[$n]=$(ok_median "$results/$n"); done
  # podman's own cost: podman run minus the runtime's own run, per runtime.
  for rt in "${runtimes[@]}"; do
    m[adds-$rt]=$(awk -v a="${m[podman-run-$rt]}" -v b="${m[oci-run-$rt]}" 'BEGIN {
      if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/) printf "%.1f", a - b; else print "n/a" }')
  done
  row() { # LABEL KEY
    echo "| $1 | ${m[$2-husk]} | ${m[$2-crun]} | ${m[$2-runc]} | $(ratio_of "${m[$2-husk]}" "${m[$2-crun]}") | $(ratio_of "${m[$2-husk]}" "${m[$2-runc]}") | $(ratio_of "${m[$2-runc]}" "${m[$2-crun]}") |"
  }
  table=$(mktemp)
  {
    echo "## podman with husk, crun and runc (bench/podman.sh)"
    echo
    echo "$(date -u +%Y-%m-%d), $runs runs each, interleaved, ran $where."
    echo "This machine's load average at the start: $load. podman $(podman --version | awk '{print $3}'), conmon, crun and runc from Debian 12;"
    echo "images built offline by integration/podman/setup; \`RUNTIME run\` uses a bundle of the same busybox-static"
    echo "rootfs with \`runc spec\`'s config.json. Goal (issue 5, on a host with hardware KVM): husk / crun <= 1.6 for"
    echo "podman run, <= 1.5 for podman exec; what podman adds on top of husk no more than on top of crun."
    case $where in
    *"test bed"*) echo "Before every timed run of each runtime the test host zeroes and frees 256 MiB (scrub_testbed_memory in bench/lib.sh, see the boot section)." ;;
    esac
    echo
    echo "| wall ms (median of successful runs) | husk | crun | runc | husk / crun | husk / runc | runc / crun |"
    echo "|---|---|---|---|---|---|---|"
    row "\`podman run --rm --network none localhost/busybox true\`" podman-run
    row "\`podman exec CTR true\`" podman-exec
    row "\`RUNTIME run --bundle B ID\` (no podman)" oci-run
    row "what podman adds to a run (podman run - RUNTIME run)" adds
    failure_notes "${names[@]}"
  } >"$table"
  publish_table podman "$table"
  exit 0
fi

# Inside (RESULTS: the directory the host side gave).
: "${RESULTS:?}"
podman_env "${HUSK_PODMAN_WHERE:?}"
bundle=$(mktemp -d /tmp/husk-bench-podman.XXXXXX)
cleanup() {
  for rt in "${runtimes[@]}"; do podman rm -f -t 0 "bench-exec-$rt-$$" >/dev/null 2>&1 || true; done
  rm -rf "$bundle"
}
trap cleanup EXIT
busybox_bundle "$bundle" true
# One container per runtime for the execs; if it does not start, every exec into it fails
# and the table says so.
for rt in "${runtimes[@]}"; do
  podman --runtime "$rt" run -d --network none --name "bench-exec-$rt-$$" localhost/busybox \
    sleep 1000000 >/dev/null 2>"$RESULTS/podman-exec-$rt.err" || true
  [ -s "$RESULTS/podman-exec-$rt.err" ] || rm -f "$RESULTS/podman-exec-$rt.err"
done
for i in $(seq "$runs"); do
  for rt in "${runtimes[@]}"; do
    scrub_testbed_memory
    time_into "podman-run-$rt" podman --runtime "$rt" run --rm --network none localhost/busybox true
    time_into "podman-exec-$rt" podman exec "bench-exec-$rt-$$" true
    rt_bin=$(command -v "$rt" || true)
    [ "$rt" != husk ] || rt_bin=$out/husk
    scrub_testbed_memory
    time_into "oci-run-$rt" "$rt_bin" run --bundle "$bundle" "bench-podman-$$-$i-$rt"
  done
  line="run $i (ms status):"
  for n in "${names[@]}"; do line+=" $n $(tail -n1 "$RESULTS/$n" | tr ' ' /)"; done
  echo "$line" >&2
done
for i in $(seq "$runs"); do "$out/husk" delete --force "bench-podman-$$-$i-husk" >/dev/null 2>&1 || true; done
