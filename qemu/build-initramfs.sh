#!/usr/bin/env bash
# build-initramfs.sh - build qemu/.cache/initrd.gz, the test guest's initramfs
# (and initrd-probe.gz, the same without modules, fio and the other scenarios,
# for run-vm.sh's KVM probe boot). initrd.gz holds:
#   /bin/busybox (static) + applet links, /init (qemu/guest/init),
#   /lib/lsvblk-e2e.sh (qemu/guest/e2e-lib.sh), every scenario as
#   /scenarios/NAME.sh (qemu/scenarios/*.sh), the kernel modules in
#   /lib/modules/*.ko with their insmod order in /etc/lsvblk-modules, and
#   /usr/bin/fio with all its libraries and the dynamic loader.
# The kernel command line word lsvblk.scenario=NAME picks the scenario at boot.
#
# Usage: qemu/build-initramfs.sh [--force]
#   Rebuilds only when an input is newer than initrd.gz (or with --force).
#   Run qemu/fetch.sh first.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

force=0
case "${1:-}" in
  --force) force=1 ;;
  "") ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument $1 (usage: $0 [--force])" ;;
esac

for f in "$BUSYBOX" "$KERNEL_DIR/vmlinuz" "$FIO_DIR/bin/fio" "$FIO_DIR/loader-path"; do
  [ -e "$f" ] || die "$f missing: run qemu/fetch.sh first"
done

inputs=("$QEMU_DIR"/guest/* "$QEMU_DIR"/scenarios/*.sh "$QEMU_DIR/build-initramfs.sh" "$QEMU_DIR/common.sh"
  "$BUSYBOX" "$KERNEL_DIR/VERSION" "$FIO_DIR/VERSION")
if [ "$force" = 0 ] && [ -s "$INITRD" ] && [ -s "$INITRD_PROBE" ]; then
  stale=0
  for f in "${inputs[@]}"; do if [ "$f" -nt "$INITRD" ]; then stale=1; fi; done
  if [ "$stale" = 0 ]; then
    echo "initramfs up to date: $INITRD ($(du -h "$INITRD" | cut -f1))"
    exit 0
  fi
fi

start=$(date +%s%N)
STAGE=$(mktemp -d "$CACHE/initramfs.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT

# archive OUT: the stage as a newc cpio (owned by root, stable order; busybox's
# cpio, so the host needs no cpio package), gzip -1 (fast to build and unpack).
archive() {
  (cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc -R 0:0 2>/dev/null) |
    gzip -1 -n >"$1.tmp"
  mv "$1.tmp" "$1"
}

mkdir -p "$STAGE"/{bin,sbin,usr/bin,usr/sbin,etc,lib/modules,lib/x86_64-linux-gnu,proc,sys,dev,tmp,mnt,scenarios}

# busybox and one link per applet.
cp "$BUSYBOX" "$STAGE/bin/busybox"
while read -r applet; do
  case $applet in /*) ;; */*) applet=/$applet ;; *) applet=/bin/$applet ;; esac
  [ "$applet" = /bin/busybox ] && continue
  [ -e "$STAGE$applet" ] || ln -s /bin/busybox "$STAGE$applet"
done < <("$BUSYBOX" --list-full 2>/dev/null || "$BUSYBOX" --list)

# init, helpers and the probe scenario: that much is the KVM probe initramfs
# (run-vm.sh boots it to see whether KVM works here; it loads no modules).
install -m 0755 "$QEMU_DIR/guest/init" "$STAGE/init"
install -m 0644 "$QEMU_DIR/guest/e2e-lib.sh" "$STAGE/lib/lsvblk-e2e.sh"
install -m 0644 "$QEMU_DIR/scenarios/probe.sh" "$STAGE/scenarios/"
: >"$STAGE/etc/lsvblk-modules"
archive "$INITRD_PROBE"

# Kernel modules, in GUEST_MODULES order; check that order satisfies every
# module's depends= (no modules.dep / modprobe in the guest).
loaded=" "
for m in "${GUEST_MODULES[@]}"; do
  ko=$KERNEL_DIR/modules/$m.ko
  [ -f "$ko" ] || die "$ko missing (re-run qemu/fetch.sh with LSVBLK_QEMU_REFRESH=1?)"
  deps=$(tr '\0' '\n' <"$ko" | sed -n 's/^depends=//p' | head -n1)
  for d in ${deps//,/ }; do
    [[ "$loaded" == *" $d "* ]] || die "module order: $m needs $d, which is not loaded before it (fix GUEST_MODULES in common.sh)"
  done
  cp "$ko" "$STAGE/lib/modules/"
  echo "$m" >>"$STAGE/etc/lsvblk-modules"
  loaded+="$m "
done

# fio, its libraries and the loader at the path fio's PT_INTERP names.
cp "$FIO_DIR/bin/fio" "$STAGE/usr/bin/fio"
loader=$(cat "$FIO_DIR/loader-path")
for lib in "$FIO_DIR"/lib/*; do
  [ "$(basename "$lib")" = "$(basename "$loader")" ] && continue
  cp "$lib" "$STAGE/lib/x86_64-linux-gnu/"
done
mkdir -p "$STAGE$(dirname "$loader")"
cp "$FIO_DIR/lib/$(basename "$loader")" "$STAGE$loader"

# All scenarios.
scenarios=()
for s in "$QEMU_DIR"/scenarios/*.sh; do
  install -m 0644 "$s" "$STAGE/scenarios/"
  scenarios+=("$(basename "$s" .sh)")
done
archive "$INITRD"

ms=$((($(date +%s%N) - start) / 1000000))
printf 'built %s: %s (%s uncompressed), scenarios: %s; probe initramfs %s; %d.%03ds\n' "$INITRD" \
  "$(du -h "$INITRD" | cut -f1)" "$(du -sh "$STAGE" | cut -f1)" "${scenarios[*]}" \
  "$(du -h "$INITRD_PROBE" | cut -f1)" $((ms / 1000)) $((ms % 1000))
