#!/usr/bin/env bats
# `podman run --rm`: output, exit statuses, errors, and the options podman users pass.

load helpers

teardown() { after_test; }
teardown_file() { remove_suite_containers; }

# The options podman users pass every day, checked on ONE container that has them all:
# each on a container of its own would cost a microVM boot and podman's own seconds. Every
# option still has its own test, reading its lines of that container's report, which the
# first test to ask makes (again after a failure) and the file's later tests reuse.
# (`--network none` comes with every container of the suite: pm_run.)
OPTIONS=(-e HUSK_TEST=some-value -w /tmp --hostname husk-box --tmpfs /scratch --read-only
  --cpus 2 --memory 256m)
# shellcheck disable=SC2016 # expanded in the container
REPORT='
  echo "env=$HUSK_TEST"
  echo "pwd=$(pwd)"
  echo "hostname=$(hostname)"
  echo "uname=$(uname -r)"
  echo "scratch-fs=$(awk "\$2 == \"/scratch\" { print \$3 }" /proc/mounts)"
  echo "scratch-write=$( (echo hi >/scratch/f && cat /scratch/f) 2>&1)"
  echo "root-write=$( (touch /x) 2>&1)"
  echo "tmp-write=$( (echo ok >/tmp/y && cat /tmp/y) 2>&1)"
  echo "nproc=$(nproc)"
  echo "cpu-max=$(cat /sys/fs/cgroup/cpu.max 2>/dev/null || echo "$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) 100000")"
  echo "memtotal-mib=$(awk "/^MemTotal:/ { print int(\$2 / 1024) }" /proc/meminfo)"
  echo "memory-max=$(cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes)"
  set -- $(ls /sys/class/net)
  echo "net=$*"
'

# option_report KEY: the value of KEY=... in the report of the container with $OPTIONS.
option_report() {
  local report=$BATS_FILE_TMPDIR/options-report
  if [ ! -s "$report" ]; then
    run pm_run --rm "${OPTIONS[@]}" "$IMAGE" sh -c "$REPORT"
    assert_status 0 || return 1
    printf '%s\n' "$output" >"$report"
  fi
  sed -n "s/^$1=//p" "$report"
}

@test "run --rm: output reaches the user" {
  run pm_run --rm "$IMAGE" echo hello from a container
  assert_status 0
  [ "$output" = "hello from a container" ] || fail "unexpected output"
}

@test "run --rm: exit status 0 and 3" {
  run pm_run --rm "$IMAGE" true
  assert_status 0
  run pm_run --rm "$IMAGE" sh -c 'exit 3'
  assert_status 3
}

@test "run --rm: a missing command exits 127, the cause in one line" {
  run -127 pm_run --rm "$IMAGE" no-such-command
  [ "${#lines[@]}" -eq 1 ] || fail "expected exactly one line"
  # runc and husk: "executable file not found in $PATH"; crun names the file in between.
  [[ $output =~ executable\ file\ .*not\ found\ in\ \$PATH ]] || fail "not the real cause"
}

@test "run --rm: a command that cannot be executed exits 126" {
  run -126 pm_run --rm "$IMAGE" /bin
  [ "${#lines[@]}" -eq 1 ] || fail "expected exactly one line"
  [[ ${output,,} == *'permission denied'* ]] || fail "not the real cause"
}

@test "run --rm: killed by SIGKILL exits 137" {
  name=$(ctr_name)
  pm_run --rm --name "$name" "$IMAGE" sh -c 'echo ready; while :; do sleep 3600; done' \
    >"$BATS_TEST_TMPDIR/out" 2>&1 &
  runner=$!
  wait_until "$TIMEOUT" grep -qx ready "$BATS_TEST_TMPDIR/out"
  pm kill "$name"
  status=0
  wait "$runner" || status=$?
  output=$(cat "$BATS_TEST_TMPDIR/out")
  assert_status 137
}

@test "run --rm: uname -r is the runtime's kernel" {
  got=$(option_report uname)
  if is_vm_runtime; then
    want=$(guest_kernel_release)
    [ -n "$want" ] || fail "cannot read the guest kernel's version from $(dirname "$HUSK_BIN")/vmlinux"
    [ "$got" = "$want" ] || fail "uname -r said '$got', expected the guest kernel $want"
  else
    [ "$got" = "$(uname -r)" ] || fail "uname -r said '$got', expected the host kernel $(uname -r)"
  fi
}

@test "run -v HOSTDIR:DIR: the container reads and writes the host directory" {
  dir=$BATS_TEST_TMPDIR/data
  mkdir "$dir"
  echo from-host >"$dir/in"
  run pm_run --rm -v "$dir:/data" "$IMAGE" sh -c 'cat /data/in && echo from-container >/data/out'
  assert_status 0
  [ "$output" = from-host ] || fail "did not read the host's file"
  [ "$(cat "$dir/out")" = from-container ] || fail "the write is not on the host"
}

@test "run -v HOSTDIR:DIR:ro: reads work, writes are refused" {
  dir=$BATS_TEST_TMPDIR/data
  mkdir "$dir"
  echo from-host >"$dir/in"
  run pm_run --rm -v "$dir:/data:ro" "$IMAGE" sh -c 'cat /data/in; echo x >/data/out'
  [ "$status" -ne 0 ] || fail "the write to a read-only volume succeeded"
  assert_line from-host
  [[ $output == *'Read-only file system'* ]] || fail "expected EROFS"
  [ ! -e "$dir/out" ] || fail "a file appeared on the host"
}

@test "run --tmpfs: a writable tmpfs at the path" {
  [ "$(option_report scratch-fs)" = tmpfs ] || fail "/scratch is not a tmpfs"
  [ "$(option_report scratch-write)" = hi ] || fail "/scratch is not writable"
}

@test "run -e: the variable is in the environment" {
  [ "$(option_report env)" = some-value ] || fail "wrong value"
}

@test "run -w: the working directory" {
  [ "$(option_report pwd)" = /tmp ] || fail "wrong directory"
}

@test "run --user: uid and gid" {
  run pm_run --rm --user 1000:1001 "$IMAGE" sh -c 'id -u; id -g'
  assert_status 0
  [ "${lines[0]}" = 1000 ] && [ "${lines[1]}" = 1001 ] || fail "expected uid 1000, gid 1001"
}

@test "run --hostname" {
  [ "$(option_report hostname)" = husk-box ] || fail "wrong hostname"
}

@test "run --cpus 2: two CPUs in the container" {
  if is_vm_runtime; then
    # One vCPU per CPU of the quota.
    [ "$(option_report nproc)" = 2 ] || fail "expected 2 vCPUs"
  else
    # A container runtime shows the host's CPUs and enforces the quota by cgroup.
    [ "$(option_report nproc)" = "$(nproc)" ] || fail "expected the host's $(nproc) CPUs"
    [ "$(option_report cpu-max)" = "200000 100000" ] || fail "expected a quota of 2 CPUs in cpu.max"
  fi
}

@test "run --memory 256m: the limit is visible in the container" {
  if is_vm_runtime; then
    # Guest RAM follows the limit (plus a small overhead); the kernel keeps some for itself.
    mib=$(option_report memtotal-mib)
    [ "$mib" -ge 200 ] && [ "$mib" -le 320 ] || fail "MemTotal $mib MiB, expected about 256"
  else
    [ "$(option_report memory-max)" = 268435456 ] || fail "expected memory.max 268435456"
  fi
}

@test "run --read-only: the root is read-only, tmp is writable" {
  [[ $(option_report root-write) == *'Read-only file system'* ]] || fail "writing / did not fail with EROFS"
  [ "$(option_report tmp-write)" = ok ] || fail "/tmp is not writable"
}

@test "run --network none: loopback only" {
  [ "$(option_report net)" = lo ] || fail "expected only lo"
}

@test "run: the image's entrypoint, env, workdir and cmd" {
  run pm_run --rm "$ENTRY_IMAGE"
  assert_status 0
  [ "$output" = "entrypoint: pwd=/srv/app greeting=hello from husk-entry args=default-arg" ] ||
    fail "image config not applied"
  run pm_run --rm "$ENTRY_IMAGE" exec sh -c 'echo "$PWD $HUSK_GREETING"'
  assert_status 0
  assert_line "/srv/app hello from husk-entry"
}

@test "run --entrypoint: replaces the image's entrypoint" {
  run pm_run --rm --entrypoint /bin/echo "$ENTRY_IMAGE" replaced
  assert_status 0
  [ "$output" = replaced ] || fail "the image's entrypoint ran"
}

@test "run --init: an init process is PID 1 and the command runs under it" {
  run pm_run --rm --init "$IMAGE" sh -c 'tr "\0" " " </proc/1/cmdline; echo; echo "sh is pid $$"'
  assert_status 0
  [[ ${lines[0]} == /run/podman-init* ]] || fail "PID 1 is not podman's init"
  [ "${lines[1]}" != "sh is pid 1" ] || fail "the command is PID 1"
}
