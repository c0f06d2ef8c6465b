#!/usr/bin/env bash
# Throughput of the data path, in the guest through `husk vm run`, next to the same work
# on the machine that runs the VMM, in the same run: sequential write and read of a file
# on virtio-fs (dd), find + stat over 10,000 small files, and a file through the guest
# process's stdout to the host (cat, checksum checked). Writes its table into
# docs/benchmarks.md.
#   bench/data.sh [FILE_MIB [STDOUT_MIB]]     (defaults 1024 and 256)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

mib=${1:-1024}
stdout_mib=${2:-256}
out=target/release
require_build bench/data.sh "$out" /bin/busybox

if [ "${HUSK_BENCH_INNER:-}" != 1 ]; then
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  results=$(mktemp -d /tmp/husk-bench-data.XXXXXX)
  trap 'rm -rf "$results"' EXIT
  where=""
  measure_where bench/data.sh "$results" "$mib" "$stdout_mib"
  [ -s "$results/data" ] || { echo "bench/data.sh: no results" >&2; exit 1; }
  # lines: name guest_s host_s label MiB
  row() {
    awk -v n="$1" -v unit="$2" '$1 == n {
      if (unit == "MiB/s") printf "| %s | %.1f MiB/s | %.1f MiB/s | %.0f%% |\n", $4, $5 / $2, $5 / $3, 100 * $3 / $2;
      else printf "| %s | %.2f s | %.2f s | %.0f%% |\n", $4, $2, $3, 100 * $3 / $2 }' "$results/data"
  }
  table=$(mktemp)
  {
    echo "## Data path throughput: guest vs host (bench/data.sh)"
    echo
    echo "$(date -u +%Y-%m-%d), one run each, a $mib MiB file for dd, $stdout_mib MiB through stdout, 1 vCPU / 512 MiB guest, ran $where."
    echo "This machine's load average at the start: $load. Guest work runs in \`husk vm run\` over a busybox rootfs on virtio-fs"
    echo "(share cache policy: exclusive for the rootfs); host work is the same command on the directory the VMM shares."
    echo "Guest times are taken inside the guest (/proc/uptime) except stdout, which is the host's wall time for"
    echo "\`husk vm run -- cat FILE | sha256sum\` minus that of \`husk vm run -- true\`. Copies per byte on the host side:"
    echo "virtio-fs file data 1 (preadv/pwritev between the file and guest memory), vsock 1 (socket <-> guest memory)."
    echo
    echo "| work | guest | host | guest as % of host |"
    echo "|---|---|---|---|"
    row write MiB/s; row read MiB/s; row meta s; row stdout MiB/s
    cat "$results/notes" 2>/dev/null || true
  } >"$table"
  cat "$table"
  replace_section docs/benchmarks.md data "$table"
  rm -f "$table"
  exit 0
fi

# Inside (RESULTS: the directory the host side gave).
: "${RESULTS:?}"
work=$(mktemp -d /tmp/husk-bench-data.XXXXXX)
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
busybox_rootfs "$rootfs"
mkdir -p "$rootfs/meta"
head -c $((mib << 20)) /dev/urandom >"$rootfs/big"
head -c $((stdout_mib << 20)) /dev/urandom >"$rootfs/out"
for d in $(seq 100); do
  mkdir "$rootfs/meta/$d"
  for f in $(seq 100); do : >"$rootfs/meta/$d/$f"; done
done
vmrun() { "$out/husk" vm run --memory 512 --rootfs "$rootfs" -- "$@"; }
# Seconds a shell snippet takes inside the guest, by its own clock.
guest_secs() {
  vmrun sh -c "a=\$(cut -d' ' -f1 /proc/uptime); $1; b=\$(cut -d' ' -f1 /proc/uptime); echo SECS \$a \$b" |
    awk '$1 == "SECS" { printf "%.2f\n", $3 - $2 }'
}
host_secs() {
  local t0 t1; t0=$(now_ns); sh -c "$1"; t1=$(now_ns)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f\n", (b - a) / 1e9 }'
}
wall_secs() {
  local t0 t1; t0=$(now_ns); "$@"; t1=$(now_ns)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f\n", (b - a) / 1e9 }'
}

g=$(guest_secs "dd if=/dev/zero of=/w.dat bs=1M count=$mib conv=fsync 2>/dev/null")
h=$(host_secs "cd '$rootfs' && dd if=/dev/zero of=h.dat bs=1M count=$mib conv=fsync 2>/dev/null")
echo "write $g $h sequential-write-dd-${mib}MiB $mib" >>"$RESULTS/data"
rm -f "$rootfs/w.dat" "$rootfs/h.dat"

g=$(guest_secs "dd if=/big of=/dev/null bs=1M 2>/dev/null")
h=$(host_secs "dd if='$rootfs/big' of=/dev/null bs=1M 2>/dev/null")
echo "read $g $h sequential-read-dd-${mib}MiB $mib" >>"$RESULTS/data"

g=$(guest_secs "find /meta -type f | xargs stat >/dev/null")
h=$(host_secs "cd '$rootfs' && find meta -type f | xargs stat >/dev/null")
echo "meta $g $h find+stat-10000-files" >>"$RESULTS/data"

want=$(sha256sum <"$rootfs/out" | cut -d' ' -f1)
base=$(wall_secs vmrun true)
got_file=$work/got
t=$(wall_secs sh -c "'$out/husk' vm run --memory 512 --rootfs '$rootfs' -- cat /out | sha256sum >'$got_file'")
got=$(cut -d' ' -f1 <"$got_file")
echo "" >>"$RESULTS/notes"
if [ "$got" = "$want" ]; then
  g=$(awk -v t="$t" -v b="$base" 'BEGIN { printf "%.2f\n", t - b }')
  h=$(host_secs "cat '$rootfs/out' | sha256sum >/dev/null")
  echo "stdout $g $h stdout-cat-to-host-${stdout_mib}MiB(sha256-checked) $stdout_mib" >>"$RESULTS/data"
  echo "stdout checksum matched ($want)." >>"$RESULTS/notes"
else
  echo "bench/data.sh: stdout checksum mismatch: $got != $want" >&2
  echo "**stdout: FAILED, the host received a different stream (sha256 $got, want $want).**" >>"$RESULTS/notes"
fi
