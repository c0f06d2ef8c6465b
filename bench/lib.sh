# Shared by bench/*.sh: medians, timing a command to a marker line, RSS, VM exits (perf).
# shellcheck shell=bash

# median: reads numbers (one per line) on stdin, prints their median.
median() {
  sort -g | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print "nan"; exit }
    if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

now_ns() { date +%s%N; }

# time_to_marker MARKER CMD...: runs CMD under /usr/bin/time -v with its stdout read line
# by line (kept in $TTM_LOG if set); prints "<ms to marker> <ms to exit> <peak RSS KiB>
# <exit status>". No perf here: starting perf (its tracepoint setup) took 1.5-3 s in the
# test bed, added to whatever it wraps; count VM exits apart with count_exits.
time_to_marker() {
  local marker=$1; shift
  local tv; tv=$(mktemp)
  local t0 t_mark="" t_end status line
  t0=$(now_ns)
  while IFS= read -r line; do
    if [ -z "$t_mark" ] && [[ $line == *"$marker"* ]]; then t_mark=$(now_ns); fi
    if [ -n "${TTM_LOG:-}" ]; then printf '%s\n' "$line" >>"$TTM_LOG"; fi
  done < <(/usr/bin/time -v -o "$tv" "$@" 2>/dev/null; echo "__status $?")
  t_end=$(now_ns)
  status=$(grep -o 'Exit status: [0-9]*' "$tv" | awk '{print $3}')
  local rss; rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$tv")
  rm -f "$tv"
  [ -n "$t_mark" ] || t_mark=$t_end
  echo "$(( (t_mark - t0) / 1000000 )) $(( (t_end - t0) / 1000000 )) ${rss:-0} ${status:-1}"
}

# count_exits CMD...: runs CMD (output discarded) and prints the VM exits its threads
# took over the whole run: the kvm:kvm_exit tracepoint counted by perf (KVM's debugfs
# totals only cover VMs still alive).
count_exits() {
  local pf; pf=$(mktemp)
  perf stat -e kvm:kvm_exit -x, -o "$pf" -- "$@" >/dev/null 2>&1 || true
  local exits; exits=$(awk -F, '$3 == "kvm:kvm_exit" {print $1}' "$pf")
  rm -f "$pf"
  echo "${exits:-0}"
}

# replace_section FILE NAME CONTENT_FILE: puts CONTENT_FILE between the markers
# <!-- NAME:begin --> and <!-- NAME:end --> in FILE (appending them if absent).
replace_section() {
  local file=$1 name=$2 content=$3
  [ -f "$file" ] || printf '# husk benchmarks\n\nEvery startup path, measured against the alternatives in the same run. Medians.\n' >"$file"
  if ! grep -q "<!-- $name:begin -->" "$file"; then
    printf '\n<!-- %s:begin -->\n<!-- %s:end -->\n' "$name" "$name" >>"$file"
  fi
  awk -v name="$name" -v content="$content" '
    $0 == "<!-- " name ":begin -->" { print; while ((getline l < content) > 0) print l; skip = 1; next }
    $0 == "<!-- " name ":end -->" { skip = 0 }
    !skip { print }' "$file" >"$file.tmp" && mv "$file.tmp" "$file"
}

# publish_table NAME TABLE_FILE: prints the table and puts it into docs/benchmarks.md as
# section NAME; removes TABLE_FILE.
publish_table() {
  cat "$2"
  replace_section docs/benchmarks.md "$1" "$2"
  rm -f "$2"
}

# require_build SCRIPT OUT [FILE...]: exits with a message naming SCRIPT unless `make`'s
# output (OUT/husk, OUT/vmlinux, OUT/initramfs.cpio) and each FILE exist.
require_build() {
  local script=$1 out=$2 f
  shift 2
  for f in "$out/husk" "$out/vmlinux" "$out/initramfs.cpio" "$@"; do
    [ -e "$f" ] && continue
    case $f in
    /bin/busybox) echo "$script: $f is missing: apt-get install busybox-static" >&2 ;;
    *) echo "$script: $f is missing: run make first" >&2 ;;
    esac
    exit 1
  done
}

# measure_where SCRIPT RESULTS [ARGS...]: runs SCRIPT ARGS's measurements (with
# HUSK_BENCH_INNER=1 and RESULTS set) natively where this host's KVM boots a stock guest,
# inside the test bed otherwise; sets $where to a phrase saying which, for the report.
measure_where() {
  local script=$1 results=$2
  shift 2
  if where=$(tests/testbed/native-kvm); then
    where="natively ($where)"
    HUSK_BENCH_INNER=1 RESULTS=$results "$script" "$@"
  else
    where="in the emulated test bed (QEMU TCG test host, nested KVM): only ratios and counts mean anything"
    tests/testbed/run --rw "$results" env HUSK_BENCH_INNER=1 HUSK_BENCH_TESTBED=1 RESULTS="$results" "$script" "$@"
  fi
}

# scrub_testbed_memory: in the test bed only (HUSK_BENCH_TESTBED=1), makes the test host
# take and zero 256 MiB of its free memory, then give it back, so that the next VM gets
# pages no vCPU has run code from. Why: QEMU's TCG keeps its translations of code in a
# page until that page is written, and then checks every write to it for self-modifying
# code; the test host zeroes a fresh page one byte at a time (rep stosb), so zeroing a
# 2 MiB huge page that a previous guest kernel ran code from took 0.35-2.5 s instead of
# 7-20 ms. Memory freed by the previous VM is reused first, and which VM (and which step:
# its VMM's setup or its guest's first touch) hit such a page was luck: the "slow boots".
# Not a cost of either VMM and absent on hardware; done before every timed boot of both.
# HUSK_BENCH_SCRUB=0 leaves it out (to see the slow boots).
scrub_testbed_memory() {
  [ "${HUSK_BENCH_TESTBED:-}" = 1 ] && [ "${HUSK_BENCH_SCRUB:-1}" = 1 ] || return 0
  dd if=/dev/zero of=/dev/null bs=256M count=1 2>/dev/null || true
}

# qemu_microvm_argv OUT: sets the array `qemu` to the qemu microvm command the boot
# benchmarks compare husk with: OUT/vmlinux and OUT/initramfs.cpio, 1 vCPU / 128 MiB, and
# husk's default kernel command line, except how the guest ends: qemu microvm has no
# i8042, so its guest triple-faults out (reboot=t). QEMU_CMDLINE overrides the line.
qemu_microvm_argv() {
  local out=$1 cmdline
  cmdline=$(sed -n '/^pub const DEFAULT_CMDLINE/,/;$/p' runtime/src/vmm/config.rs |
    tr -d '\\\n' | sed 's/.*= *"//; s/";.*//; s/  */ /g; s/reboot=k/reboot=t/')
  [[ $cmdline == console=ttyS0* ]] || { echo "bench: cannot read husk's DEFAULT_CMDLINE" >&2; return 1; }
  # shellcheck disable=SC2034 # the array is the caller's result
  qemu=(qemu-system-x86_64 -M "microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=off"
    -enable-kvm -cpu host -m 128 -smp 1 -nodefaults -no-reboot -nographic -serial stdio
    -kernel "$out/vmlinux" -initrd "$out/initramfs.cpio"
    -append "${QEMU_CMDLINE:-$cmdline}")
}

# busybox_rootfs DIR: a busybox-static rootfs in DIR (the same as tests/vm/run.rs builds):
# /bin/busybox, a link per applet, the usual top-level directories.
busybox_rootfs() {
  local root=$1 a
  mkdir -p "$root"/{bin,dev,proc,sys,tmp,etc,root,run}
  cp /bin/busybox "$root/bin/busybox"
  for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$root/bin/$a"; done
}

# busybox_bundle DIR WORD: an OCI bundle in DIR whose process runs the busybox applet WORD
# without a terminal: a busybox rootfs and runc's default config.json (`runc spec`), the
# same for every runtime compared.
busybox_bundle() {
  local dir=$1 word=$2
  busybox_rootfs "$dir/rootfs"
  (cd "$dir" && runc spec)
  sed -i -e 's/"terminal": true/"terminal": false/' \
    -e '/"args": \[/,/\]/ s/"sh"/"'"$word"'"/' "$dir/config.json"
  if ! grep -q '"terminal": false' "$dir/config.json" || ! grep -q "\"$word\"" "$dir/config.json"; then
    echo "busybox_bundle: could not edit runc's config.json" >&2
    return 1
  fi
}

# time_into NAME CMD...: runs CMD (output discarded) and appends "<wall ms> <exit status>"
# to $RESULTS/NAME; the first failure's last output lines go to $RESULTS/NAME.err.
time_into() {
  local name=$1; shift
  local t0 t1 status=0 log; log=$(mktemp)
  t0=$(now_ns)
  "$@" >"$log" 2>&1 </dev/null || status=$?
  t1=$(now_ns)
  echo "$(( (t1 - t0) / 1000000 )) $status" >>"$RESULTS/$name"
  if [ $status -ne 0 ] && [ ! -e "$RESULTS/$name.err" ]; then
    { echo "exit $status: $*"; tail -n 3 "$log"; } >"$RESULTS/$name.err"
  fi
  rm -f "$log"
  return 0
}

# ok_median FILE: the median wall ms of FILE's successful runs (time_into's lines), or
# "failed" when none succeeded.
ok_median() {
  local m; m=$(awk '$2 == 0 { print $1 }' "$1" 2>/dev/null | median)
  if [ "$m" = nan ]; then echo failed; else echo "$m"; fi
}

# failures FILE: "N of M" runs of FILE that failed, or nothing when none did.
failures() {
  awk '$2 != 0 { f++ } END { if (f) printf "%d of %d", f, NR }' "$1" 2>/dev/null
}

# ratio_of A B: A / B to two places, "n/a" unless both are numbers.
ratio_of() {
  awk -v a="$1" -v b="$2" 'BEGIN {
    if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2f", a / b; else print "n/a" }'
}

# failure_notes NAME...: a line per NAME whose runs failed: how many, and the first error.
failure_notes() {
  local n f
  for n in "$@"; do
    f=$(failures "$RESULTS/$n")
    [ -z "$f" ] && continue
    echo
    echo "**$n: $f runs failed.** First error: \`$(head -c 400 "$RESULTS/$n.err" 2>/dev/null | tr '\n`' ' \047' | sed 's/ *$//')\`"
  done
}
