#!/usr/bin/env bash
# build.sh OUT_DIR
# Builds husk's guest kernel, an uncompressed ELF vmlinux with the PVH entry note, from
# Debian's linux-source-6.12 tarball: tinyconfig + husk.config (merge_config.sh),
# olddefconfig, `make vmlinux`, strip. Writes OUT_DIR/vmlinux and OUT_DIR/vmlinux.config.
#
# Cached by the sha256 of its inputs (husk.config, this script, the installed
# linux-source-6.12 package version, the gcc version) in
# ${HUSK_CACHE_DIR:-/var/cache/husk}/kernel/<hash>/{vmlinux,config,build.log}; with a cache
# hit nothing is built, the two files are only copied. The build runs in a work dir under
# the cache (never in the repo), the entry is published by one rename, and the extracted
# tree is removed afterwards. HUSK_KERNEL_KEEP_WORK=1 keeps the tree of a failed build.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fragment=$here/husk.config
self=$here/build.sh
checker=$here/check-config.sh
tarball=/usr/src/linux-source-6.12.tar.xz
pkg=linux-source-6.12

log() { echo "husk kernel: $*" >&2; }
die() { echo "husk kernel: error: $*" >&2; exit 1; }

[ $# -eq 1 ] || { echo "usage: $0 OUT_DIR" >&2; exit 2; }
out_dir=$1

# --- inputs ---------------------------------------------------------------------------
[ -r "$tarball" ] || die "$tarball is missing: run scripts/install-deps.sh (installs $pkg and the build tools)"
pkg_version=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null) ||
  die "package $pkg is not installed (dpkg-query): run scripts/install-deps.sh"
for tool in gcc make flex bison bc cpio xz strip readelf flock sha256sum; do
  command -v "$tool" >/dev/null || die "'$tool' not found: run scripts/install-deps.sh"
done
gcc_version=$(gcc --version | head -n1)

hash=$(
  {
    printf 'fragment\n'; sha256sum <"$fragment"
    printf 'build.sh\n'; sha256sum <"$self"
    printf 'pkg %s\n' "$pkg_version"
    printf 'gcc %s\n' "$gcc_version"
  } | sha256sum | cut -c1-16
)
upstream=${pkg_version%%-*}   # e.g. 6.12.117
cache_root=${HUSK_CACHE_DIR:-/var/cache/husk}/kernel
entry=$cache_root/$hash

publish_out() {
  mkdir -p "$out_dir"
  # Copy through temp names and rename, so OUT_DIR never holds a half-written kernel.
  cp -p "$entry/vmlinux" "$out_dir/.vmlinux.tmp.$$"
  cp -p "$entry/config" "$out_dir/.vmlinux.config.tmp.$$"
  mv -f "$out_dir/.vmlinux.tmp.$$" "$out_dir/vmlinux"
  mv -f "$out_dir/.vmlinux.config.tmp.$$" "$out_dir/vmlinux.config"
  log "$out_dir/vmlinux and $out_dir/vmlinux.config (from $entry)"
}

if [ -f "$entry/vmlinux" ] && [ -f "$entry/config" ]; then
  log "$upstream-husk is cached (hash $hash): nothing to build"
  publish_out
  exit 0
fi

# --- build (one builder per hash; a second caller waits, then finds the entry) ---------
mkdir -p "$cache_root"
exec 9>"$cache_root/$hash.lock"
if ! flock -n 9; then
  log "another build of hash $hash is running: waiting for it"
  flock 9
fi
if [ -f "$entry/vmlinux" ] && [ -f "$entry/config" ]; then
  log "$upstream-husk was built meanwhile (hash $hash)"
  publish_out
  exit 0
fi

work=$cache_root/.work-$hash
stage=$cache_root/.stage-$hash
build_log=$cache_root/$hash.build.log
rm -rf "$work" "$stage"
mkdir -p "$work/src" "$stage"
: >"$build_log"

ncpu=$(nproc)
est=$(( (14 + ncpu - 1) / ncpu ))
[ "$est" -ge 2 ] || est=2

phase=""
on_exit() {
  local rc=$?
  if [ $rc -ne 0 ]; then
    echo "husk kernel: FAILED while $phase (exit $rc); last lines of $build_log:" >&2
    tail -n 40 "$build_log" >&2 || true
    echo "husk kernel: full log: $build_log" >&2
    if [ "${HUSK_KERNEL_KEEP_WORK:-0}" = 1 ]; then
      echo "husk kernel: work tree kept in $work" >&2
    else
      rm -rf "$work"
    fi
    rm -rf "$stage"
  fi
}
trap on_exit EXIT

run() { # run PHASE-DESCRIPTION CMD...: one stderr line, output to the build log
  phase=$1; shift
  log "$phase"
  { echo "=== $phase: $*"; } >>"$build_log"
  "$@" >>"$build_log" 2>&1
}

log "building $upstream-husk (cached by hash $hash), ~$est min on $ncpu cores; log: $build_log"
start=$(date +%s)
run "extracting $tarball" tar -xf "$tarball" -C "$work/src" --strip-components=1
src=$work/src
mk() { make -C "$src" KBUILD_BUILD_USER=husk KBUILD_BUILD_HOST=husk "$@"; }
run "configuring: tinyconfig + husk.config, olddefconfig" \
  bash -c 'set -e; make -C "$1" tinyconfig; cd "$1" && scripts/kconfig/merge_config.sh -m .config "$2"; make -C "$1" olddefconfig' \
  _ "$src" "$fragment"
run "checking that every option of husk.config holds" bash "$checker" "$fragment" "$src/.config"
run "compiling vmlinux (make -j$ncpu vmlinux)" mk -j"$ncpu" vmlinux
run "stripping vmlinux (symbols only: .notes and the PVH entry note stay)" \
  strip --strip-all -o "$stage/vmlinux" "$src/vmlinux"
phase="checking the PVH note"
# XEN_ELFNOTE_PHYS32_ENTRY (type 0x12, owner "Xen") in a PT_NOTE segment is what QEMU and
# linux-loader look for to enter the kernel by PVH.
readelf -lW "$stage/vmlinux" | grep -q '^ *NOTE ' || die "stripped vmlinux has no PT_NOTE segment"
readelf -nW "$stage/vmlinux" | grep -Eq '^ *Xen .*(\(0x00000012\)|PHYS32_ENTRY)' ||
  die "stripped vmlinux has no PVH entry note (Xen, type 0x12)"
cp "$src/.config" "$stage/config"

phase="publishing the cache entry"
mv "$build_log" "$stage/build.log"
build_log=$stage/build.log
if ! mv -T "$stage" "$entry" 2>/dev/null; then
  # An entry appeared without our lock (e.g. an older half-removed one): replace it whole.
  rm -rf "$entry.old.$$"; mv -T "$entry" "$entry.old.$$" && mv -T "$stage" "$entry"
  rm -rf "$entry.old.$$"
fi
build_log=$entry/build.log
trap - EXIT
rm -rf "$work"
log "built in $(( $(date +%s) - start )) s: $entry/vmlinux ($(stat -c %s "$entry/vmlinux") bytes)"
publish_out
