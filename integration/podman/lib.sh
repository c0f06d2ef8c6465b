# Shared by integration/podman/{setup,run} and bench/podman.sh: where podman's files for
# husk's tests live, and the environment that points podman at them.
# shellcheck shell=bash
#
# Nothing here touches the machine's own podman configuration (/etc/containers) or its
# default store (/var/lib/containers): podman is pointed at these files through
# CONTAINERS_CONF and CONTAINERS_STORAGE_CONF.
#   $PODMAN_CONF_DIR (HUSK_PODMAN_CONF_DIR, default <repo>/target/podman): containers.conf
#       (registers this checkout's target/release/husk) and storage.conf, per checkout
#   $PODMAN_STORE (HUSK_PODMAN_STORE, default /var/lib/husk-podman/storage): the image
#       store the setup builds localhost/busybox and localhost/husk-entry into
#   /run/husk-podman: podman's run-time state (runroot, tmp_dir)

HUSK_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PODMAN_CONF_DIR=${HUSK_PODMAN_CONF_DIR:-$HUSK_REPO/target/podman}
PODMAN_STORE=${HUSK_PODMAN_STORE:-/var/lib/husk-podman/storage}
PODMAN_RUN_DIR=/run/husk-podman

# podman_env WHERE: exports CONTAINERS_CONF and CONTAINERS_STORAGE_CONF for podman here.
#   native:  the store is $PODMAN_STORE itself.
#   testbed: inside tests/testbed/run, where this machine's files are an overlay over 9p
#            and an overlay mount cannot have its upper dir there: containers live in a
#            fresh store on the test host's tmpfs /run, which reads the images from
#            $PODMAN_STORE as a read-only additional image store (no copy, no import).
podman_env() {
  export CONTAINERS_CONF=$PODMAN_CONF_DIR/containers.conf
  case $1 in
  native) export CONTAINERS_STORAGE_CONF=$PODMAN_CONF_DIR/storage.conf ;;
  testbed)
    mkdir -p "$PODMAN_RUN_DIR"
    cat >"$PODMAN_RUN_DIR/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$PODMAN_RUN_DIR/storage"
runroot = "$PODMAN_RUN_DIR/storage-run"

[storage.options]
additionalimagestores = ["$PODMAN_STORE"]
EOF
    export CONTAINERS_STORAGE_CONF=$PODMAN_RUN_DIR/storage.conf
    ;;
  *)
    echo "podman_env: native or testbed, not '$1'" >&2
    return 2
    ;;
  esac
}

# podman_where: sets $where to "native" where this host's KVM boots a stock guest (husk's
# VMs run here), "testbed" otherwise, and $where_reason to why.
# shellcheck disable=SC2034 # read by the callers
podman_where() {
  if where_reason=$("$HUSK_REPO/tests/testbed/native-kvm"); then
    where=native
  else
    where=testbed
  fi
}
