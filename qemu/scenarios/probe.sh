# shellcheck shell=sh
# probe - does nothing: run-vm.sh boots it (without a disk) to find out whether
# KVM can boot this guest on this host.
# shellcheck source=SCRIPTDIR/../guest/e2e-lib.sh
. /lib/lsvblk-e2e.sh
say "probe ok"
