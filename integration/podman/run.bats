#!/usr/bin/env bats
# `podman run --rm`: output, exit statuses, errors, and the options podman users pass.

load helpers

teardown() { after_test; }
teardown_file() { remove_suite_containers; }

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
  pm_run --rm --name "$name" "$IMAGE" sh -c 'echo ready; while :; do sleep 1; done' \
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
  run pm_run --rm "$IMAGE" uname -r
  assert_status 0
  if is_vm_runtime; then
    want=$(guest_kernel_release)
    [ -n "$want" ] || fail "cannot read the guest kernel's version from $(dirname "$HUSK_BIN")/vmlinux"
    [ "$output" = "$want" ] || fail "expected the guest kernel $want"
  else
    [ "$output" = "$(uname -r)" ] || fail "expected the host kernel $(uname -r)"
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
  run pm_run --rm --tmpfs /scratch "$IMAGE" sh -c \
    'awk "\$2 == \"/scratch\" { print \$3 }" /proc/mounts; echo hi >/scratch/f && cat /scratch/f'
  assert_status 0
  [ "${lines[0]}" = tmpfs ] || fail "/scratch is not a tmpfs"
  [ "${lines[1]}" = hi ] || fail "/scratch is not writable"
}

@test "run -e: the variable is in the environment" {
  run pm_run --rm -e HUSK_TEST=some-value "$IMAGE" sh -c 'echo "$HUSK_TEST"'
  assert_status 0
  [ "$output" = some-value ] || fail "wrong value"
}

@test "run -w: the working directory" {
  run pm_run --rm -w /tmp "$IMAGE" pwd
  assert_status 0
  [ "$output" = /tmp ] || fail "wrong directory"
}

@test "run --user: uid and gid" {
  run pm_run --rm --user 1000:1001 "$IMAGE" sh -c 'id -u; id -g'
  assert_status 0
  [ "${lines[0]}" = 1000 ] && [ "${lines[1]}" = 1001 ] || fail "expected uid 1000, gid 1001"
}

@test "run --hostname" {
  run pm_run --rm --hostname husk-box "$IMAGE" hostname
  assert_status 0
  [ "$output" = husk-box ] || fail "wrong hostname"
}

@test "run --cpus 2: two CPUs in the container" {
  # cgroup v2 (cpu.max), or v1 (the quota alone).
  run pm_run --rm --cpus 2 "$IMAGE" sh -c \
    'nproc; cat /sys/fs/cgroup/cpu.max 2>/dev/null || echo "$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) 100000"'
  assert_status 0
  if is_vm_runtime; then
    # One vCPU per CPU of the quota.
    [ "${lines[0]}" = 2 ] || fail "expected 2 vCPUs"
  else
    # A container runtime shows the host's CPUs and enforces the quota by cgroup.
    [ "${lines[0]}" = "$(nproc)" ] || fail "expected the host's $(nproc) CPUs"
    [ "${lines[1]}" = "200000 100000" ] || fail "expected a quota of 2 CPUs in cpu.max"
  fi
}

@test "run --memory 256m: the limit is visible in the container" {
  run pm_run --rm --memory 256m "$IMAGE" sh -c \
    'awk "/^MemTotal:/ { print int(\$2 / 1024) }" /proc/meminfo
     cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes'
  assert_status 0
  if is_vm_runtime; then
    # Guest RAM follows the limit (plus a small overhead); the kernel keeps some for itself.
    [ "${lines[0]}" -ge 200 ] && [ "${lines[0]}" -le 320 ] ||
      fail "MemTotal ${lines[0]} MiB, expected about 256"
  else
    [ "${lines[1]}" = 268435456 ] || fail "expected memory.max 268435456"
  fi
}

@test "run --read-only: the root is read-only, tmp is writable" {
  run pm_run --rm --read-only "$IMAGE" sh -c 'touch /x; echo ok >/tmp/y && cat /tmp/y'
  [[ $output == *'Read-only file system'* ]] || fail "writing / did not fail with EROFS"
  assert_line ok
}

@test "run --network none: loopback only" {
  run pm run --rm --network none --label "$LABEL" "$IMAGE" ls /sys/class/net
  assert_status 0
  [ "$output" = lo ] || fail "expected only lo"
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
