#!/usr/bin/env bash
# fetch.sh - fill qemu/.cache/ with everything the QEMU guest tests need:
#   * a private QEMU root: qemu-system-x86 (+ -common, -data, seabios, ipxe-qemu)
#     downloaded and unpacked with dpkg-deb -x, NOT installed (installing Debian 12's
#     qemu-system-x86 7.2 removes qemu-utils 10 and with it qemu-storage-daemon);
#     only its shared-library dependencies are apt-get installed on the host.
#     With LSVBLK_QEMU=10, qemu-system-x86 10 from bookworm-backports (read
#     through a private apt list, the system's sources untouched) in its own
#     root, with bookworm's seabios and ipxe-qemu;
#   * the newest Debian 6.1 kernel (linux-image-6.1.0-N-amd64): vmlinuz + the
#     virtio / loop / ext4 modules the guest insmods;
#   * a static busybox (busybox-static);
#   * fio plus every shared library it needs (and the dynamic loader), bundled
#     so it runs inside the initramfs.
#
# Usage: qemu/fetch.sh            (idempotent; a second run only re-checks)
#        LSVBLK_QEMU=10 qemu/fetch.sh   (QEMU 10 instead of 7.2, see common.sh)
#        LSVBLK_QEMU_REFRESH=1 qemu/fetch.sh   (re-download everything, e.g. to
#                                               pick up a newer kernel ABI)
# Needs: Debian 12 (bookworm) apt sources, root for apt-get install of the QEMU
# library dependencies (not needed once they are installed).
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DEBS=$CACHE/debs
REFRESH=${LSVBLK_QEMU_REFRESH:-0}
mkdir -p "$CACHE" "$DEBS"
export DEBIAN_FRONTEND=noninteractive
# Downloads land in a root-owned directory: run them as root instead of _apt
# (avoids apt's "Download is performed unsandboxed" warning).
APT_OPTS=(-o APT::Sandbox::User=root -o Dpkg::Use-Pty=0)

TMP=$(mktemp -d "$CACHE/tmp.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

apt_updated=0
apt_update_once() {
  if [ "$apt_updated" = 0 ]; then
    log "apt-get update"
    apt-get "${APT_OPTS[@]}" update -qq
    apt_updated=1
  fi
}
# Package indexes missing (fresh container)? Update before the first query.
ensure_apt_lists() {
  apt-cache show --no-all-versions busybox-static >/dev/null 2>&1 || apt_update_once
}
# apt-get download into $DEBS; on failure (stale indexes) update once and retry.
download() {
  ensure_apt_lists
  if ! (cd "$DEBS" && apt-get "${APT_OPTS[@]}" download -qq "$@" >/dev/null); then
    apt_update_once
    (cd "$DEBS" && apt-get "${APT_OPTS[@]}" download -qq "$@" >/dev/null)
  fi
}
# Path of the downloaded .deb of package $1 (apt-get download names it pkg_ver_arch.deb).
deb_of() {
  local f
  f=$(find "$DEBS" -maxdepth 1 -name "${1}_*.deb" -printf '%T@ %p\n' | sort -n | tail -n1 | cut -d' ' -f2-)
  [ -n "$f" ] || die "no .deb for $1 in $DEBS"
  printf '%s\n' "$f"
}
deb_version() { dpkg-deb -f "$1" Version; }
# Installed (not just known) Debian package?
is_installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]; }
# Sonames ldd cannot resolve for the given binaries.
missing_libs() { ldd "$@" 2>/dev/null | awk '/=> not found/{print $1}' | sort -u; }
# Fresh stamp unless a refresh is asked for.
cached() { [ "$REFRESH" != 1 ] && [ -s "$1" ]; }

fetched=()   # what this run downloaded
reused=()    # what was already cached

# bookworm-backports through a private apt list (system sources untouched), from
# the same mirror as the system's bookworm: `download_backports PKG...` into $DEBS.
download_backports() {
  local dir=$CACHE/apt-backports uri opts
  uri=$(apt-cache policy | awk '$3 == "bookworm/main" { print $2; exit }')
  [ -n "$uri" ] || { apt_update_once; uri=$(apt-cache policy | awk '$3 == "bookworm/main" { print $2; exit }'); }
  [ -n "$uri" ] || die "no bookworm/main apt source to take the backports mirror from"
  mkdir -p "$dir/lists/partial"
  echo "deb $uri bookworm-backports main" >"$dir/sources.list"
  opts=(-o "Dir::Etc::SourceList=$dir/sources.list" -o Dir::Etc::SourceParts=/dev/null -o "Dir::State::Lists=$dir/lists")
  log "apt-get update (bookworm-backports, private list)"
  apt-get "${APT_OPTS[@]}" "${opts[@]}" update -qq
  (cd "$DEBS" && apt-get "${APT_OPTS[@]}" "${opts[@]}" download -qq "$@" >/dev/null)
}

# --------------------------------------------------------------------------- QEMU
QEMU_PKGS=(qemu-system-x86 qemu-system-common qemu-system-data seabios ipxe-qemu)
QEMU_STAMP=$QEMU_ROOT/.lsvblk-fetched
if cached "$QEMU_STAMP" && [ -x "$QEMU_BIN" ]; then
  reused+=("qemu: $(head -n1 "$QEMU_STAMP")")
else
  log "downloading ${QEMU_PKGS[*]} (QEMU $QEMU_SERIES)"
  rm -f "$DEBS"/qemu-system-*.deb "$DEBS"/seabios_*.deb "$DEBS"/ipxe-qemu_*.deb
  if [ "$QEMU_SERIES" = 10 ]; then
    # 10's package asks for seabios > 1.16.3 (not in bookworm); bookworm's 1.16.2
    # boots the guests here.
    download_backports qemu-system-x86 qemu-system-common qemu-system-data
    download seabios ipxe-qemu
  else
    download "${QEMU_PKGS[@]}"
  fi
  rm -rf "$QEMU_ROOT"
  mkdir -p "$QEMU_ROOT"
  : >"$TMP/stamp"
  for p in "${QEMU_PKGS[@]}"; do
    d=$(deb_of "$p")
    dpkg-deb -x "$d" "$QEMU_ROOT"
    echo "$p=$(deb_version "$d")" >>"$TMP/stamp"
  done
  mv "$TMP/stamp" "$QEMU_STAMP"
  fetched+=("qemu: $(head -n1 "$QEMU_STAMP")")
fi

# Host libraries for the QEMU binary and its TCG accelerator module. Checked on
# every run: the cache may have been restored onto a fresh machine. TCG is a
# module in 7.2, built into 10's binary.
QEMU_NEEDED=("$QEMU_BIN")
[ "$QEMU_SERIES" = 10 ] || QEMU_NEEDED+=("$QEMU_MODDIR/accel-tcg-x86_64.so")
if [ -n "$(missing_libs "${QEMU_NEEDED[@]}")" ]; then
  log "QEMU needs: $(missing_libs "${QEMU_NEEDED[@]}" | tr '\n' ' ')"
  # Library dependencies declared by qemu-system-x86 (first alternative of each).
  d=$(deb_of qemu-system-x86 2>/dev/null) || { download qemu-system-x86; d=$(deb_of qemu-system-x86); }
  mapfile -t libdeps < <(dpkg-deb -f "$d" Depends | tr ',' '\n' | sed -E 's/\|.*//; s/\(.*\)//; s/[[:space:]]//g' | grep -E '^(lib|zlib)' | sort -u)
  want=()
  for p in "${libdeps[@]}"; do is_installed "$p" || want+=("$p"); done
  [ ${#want[@]} -gt 0 ] || die "QEMU libraries missing but all of its Depends are installed"
  [ "$(id -u)" = 0 ] || die "need root to apt-get install ${want[*]}"
  ensure_apt_lists
  # Never let this remove anything (qemu-utils 10 must stay).
  if apt-get -s install --no-install-recommends "${want[@]}" | grep -q '^Remv'; then
    apt-get -s install --no-install-recommends "${want[@]}" | grep '^Remv' >&2
    die "installing QEMU's libraries would remove packages; refusing"
  fi
  log "apt-get install ${want[*]}"
  apt-get "${APT_OPTS[@]}" install -y -qq --no-install-recommends "${want[@]}" >/dev/null
  fetched+=("host libraries: ${want[*]}")
fi
left=$(missing_libs "${QEMU_NEEDED[@]}")
[ -z "$left" ] || die "QEMU still cannot find: $left"
# Optional QEMU modules (spice, usb redirection, opengl, ...) whose libraries are
# not installed are moved aside so that nothing in the root is "not found".
# None of them is used by the headless guests run here.
mkdir -p "$QEMU_ROOT/unused-modules"
for m in "$QEMU_MODDIR"/*.so; do
  miss=$(missing_libs "$m" | tr '\n' ' ')
  if [ -n "$miss" ]; then
    mv "$m" "$QEMU_ROOT/unused-modules/"
    log "moved aside optional QEMU module $(basename "$m") (needs ${miss% })"
  fi
done
"$QEMU_BIN" --version | head -n1 | grep -q 'QEMU emulator' || die "$QEMU_BIN does not run"

# ------------------------------------------------------------------------- kernel
KSTAMP=$KERNEL_DIR/VERSION
if cached "$KSTAMP" && [ -s "$KERNEL_DIR/vmlinuz" ]; then
  reused+=("kernel: $(cat "$KSTAMP")")
else
  ensure_apt_lists
  kpkg=$(apt-cache pkgnames linux-image-6.1.0- | grep -E '^linux-image-6\.1\.0-[0-9]+-amd64$' | sort -V | tail -n1)
  [ -n "$kpkg" ] || die "no linux-image-6.1.0-*-amd64 package known to apt"
  log "downloading $kpkg"
  rm -f "$DEBS"/linux-image-*.deb
  download "$kpkg"
  d=$(deb_of "$kpkg")
  patterns=(./boot/vmlinuz-*)
  for m in "${GUEST_MODULES[@]}"; do patterns+=("./lib/modules/*/$m.ko"); done
  dpkg-deb --fsys-tarfile "$d" | tar -x -C "$TMP" --wildcards "${patterns[@]}"
  rm -rf "$KERNEL_DIR"
  mkdir -p "$KERNEL_DIR/modules"
  cp "$TMP"/boot/vmlinuz-* "$KERNEL_DIR/vmlinuz"
  for m in "${GUEST_MODULES[@]}"; do
    mapfile -t hits < <(find "$TMP/lib/modules" -name "$m.ko")
    [ ${#hits[@]} = 1 ] || die "$kpkg: expected one $m.ko, found ${#hits[@]}"
    cp "${hits[0]}" "$KERNEL_DIR/modules/"
  done
  echo "$kpkg=$(deb_version "$d")" >"$TMP/kstamp"
  mv "$TMP/kstamp" "$KSTAMP"
  rm -f "$d" # 70 MB; everything needed is extracted
  rm -rf "${TMP:?}/boot" "${TMP:?}/lib"
  fetched+=("kernel: $(cat "$KSTAMP")")
fi

# ------------------------------------------------------------------------ busybox
BSTAMP=$CACHE/busybox/VERSION
if cached "$BSTAMP" && [ -x "$BUSYBOX" ]; then
  reused+=("busybox: $(cat "$BSTAMP")")
else
  log "downloading busybox-static"
  rm -f "$DEBS"/busybox-static_*.deb
  download busybox-static
  d=$(deb_of busybox-static)
  rm -rf "$CACHE/busybox" "$TMP/bb"
  mkdir -p "$CACHE/busybox" "$TMP/bb"
  dpkg-deb -x "$d" "$TMP/bb"
  cp "$TMP/bb/bin/busybox" "$BUSYBOX"
  # It must be static: it runs before any library is there.
  if ldd "$BUSYBOX" >/dev/null 2>&1; then die "busybox from $d is not static"; fi
  echo "busybox-static=$(deb_version "$d")" >"$BSTAMP"
  rm -f "$d"
  fetched+=("busybox: $(cat "$BSTAMP")")
fi

# ---------------------------------------------------------------------------- fio
FSTAMP=$FIO_DIR/VERSION
if cached "$FSTAMP" && [ -x "$FIO_DIR/bin/fio" ]; then
  reused+=("fio: $(cat "$FSTAMP")")
else
  ensure_apt_lists
  froot=$TMP/fioroot
  mkdir -p "$froot"
  if is_installed fio; then
    # Use the host's fio and libraries as they are.
    fio_bin=/usr/bin/fio
    fver="$(dpkg-query -W -f='${Version}' fio) (host)"
    ldpath=""
  else
    # fio and whichever of its dependencies the host lacks, downloaded (not
    # installed) and unpacked into a scratch root.
    log "downloading fio and its missing dependencies"
    fdebs=$TMP/fiodebs
    mkdir -p "$fdebs/partial"
    apt-get "${APT_OPTS[@]}" install -y -qq --download-only --no-install-recommends \
      -o Dir::Cache::archives="$fdebs" fio >/dev/null
    for d in "$fdebs"/*.deb; do dpkg-deb -x "$d" "$froot"; done
    fio_bin=$froot/usr/bin/fio
    fver=$(deb_version "$(find "$fdebs" -name 'fio_*.deb' | head -n1)")
    ml=$froot/usr/lib/x86_64-linux-gnu
    ldpath=$ml:$froot/lib/x86_64-linux-gnu:$ml/ceph # librados/librbd RUNPATH ceph/
  fi
  ldd_out=$(LD_LIBRARY_PATH=$ldpath ldd "$fio_bin")
  if grep -q 'not found' <<<"$ldd_out"; then die "fio libraries not found: $(grep 'not found' <<<"$ldd_out" | tr -d '\t')"; fi
  rm -rf "$FIO_DIR"
  mkdir -p "$FIO_DIR/bin" "$FIO_DIR/lib"
  cp "$fio_bin" "$FIO_DIR/bin/fio"
  # "libfoo.so.1 => /path (0x..)" lines, and the loader line "/lib64/ld-linux-x86-64.so.2 (0x..)".
  while read -r name arrow path _; do
    if [ "$arrow" = "=>" ] && [ "${path:0:1}" = / ]; then
      cp -L "$path" "$FIO_DIR/lib/$name"
    elif [ "${name:0:1}" = / ]; then
      cp -L "$name" "$FIO_DIR/lib/$(basename "$name")"
      echo "$name" >"$FIO_DIR/loader-path"
    fi
  done <<<"$ldd_out"
  [ -s "$FIO_DIR/loader-path" ] || die "no dynamic loader in ldd output of fio"
  # Self-contained? Run it with only the bundle (loader + libraries).
  "$FIO_DIR/lib/$(basename "$(cat "$FIO_DIR/loader-path")")" --library-path "$FIO_DIR/lib" \
    "$FIO_DIR/bin/fio" --version >/dev/null || die "bundled fio does not run"
  echo "fio=$fver" >"$FSTAMP"
  fetched+=("fio: $(cat "$FSTAMP") + $(find "$FIO_DIR/lib" -type f | wc -l) libraries ($(du -sh "$FIO_DIR" | cut -f1))")
fi

for f in "${fetched[@]}"; do echo "fetched: $f"; done
for f in "${reused[@]}"; do echo "cached:  $f"; done
echo "qemu:    $QEMU_BIN ($("$QEMU_BIN" --version | head -n1))"
echo "kernel:  $KERNEL_DIR/vmlinuz + ${#GUEST_MODULES[@]} modules"
