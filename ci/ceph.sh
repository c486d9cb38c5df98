#!/usr/bin/env bash
# A real, small Ceph cluster with an S3 endpoint on this machine, for the
# object-store tests and benchmark: one monitor, one manager, three OSDs
# (BlueStore on sparse files, replicated pools of size 3 / min_size 2, so one
# OSD may die and I/O goes on) and radosgw (beast) on 127.0.0.1. Plain
# background processes: no systemd, no containers.
#
#   ci/ceph.sh up          install Debian's Ceph packages if missing, start the
#                          cluster, create an S3 user and a bucket (a no-op when up)
#   ci/ceph.sh down        stop every daemon, delete the cluster's data
#   ci/ceph.sh status      daemons, health, S3 endpoint; exit 0 only if all is up
#   ci/ceph.sh env         the S3 settings as `export ...` lines (eval "$(ci/ceph.sh env)")
#   ci/ceph.sh osd-kill N  kill -9 OSD N (0..2)       ci/ceph.sh osd-start N
#   ci/ceph.sh rgw-stop    stop radosgw               ci/ceph.sh rgw-start
#   ci/ceph.sh key-add ACCESS SECRET   give the S3 user another key pair
#   ci/ceph.sh key-rm ACCESS           revoke it (requests signed with it: 403)
#   ci/ceph.sh bucket-create NAME      create another bucket (a test's own)
#   ci/ceph.sh bucket-rm NAME          delete that bucket and every object in it
#   ci/ceph.sh use CMD...  up, run CMD, then down unless someone else still uses
#                          the cluster or it was started by a plain `up`
#
# Users of the cluster hold $LSVBLK_CEPH_DIR.users shared while they run
# (`use` does; so do the tests); a test that stops a daemon holds
# $LSVBLK_CEPH_DIR.faults exclusively and every other test holds it shared
# (tests/common/ceph.rs), so concurrent runs never see each other's faults.
#
# State lives in $LSVBLK_CEPH_DIR (default /var/tmp/lsvblk-ceph): the cluster
# is one per machine (its ports are fixed), so its state is too - not per
# checkout, not under target/ (`cargo clean` would pull files out from under
# running OSDs), not on /tmp (often RAM, and the OSD files grow by what the
# benchmark writes). The S3 endpoint is http://127.0.0.1:$LSVBLK_CEPH_RGW_PORT
# (default 7480); the monitor listens on 127.0.0.1:$LSVBLK_CEPH_MON_PORT
# (default 3300), OSDs and manager on ports the kernel picks in 6800-7300.
set -euo pipefail

CEPH_DIR=${LSVBLK_CEPH_DIR:-/var/tmp/lsvblk-ceph}
RGW_PORT=${LSVBLK_CEPH_RGW_PORT:-7480}
MON_PORT=${LSVBLK_CEPH_MON_PORT:-3300}
OSD_COUNT=3
# Each OSD's BlueStore file: sparse, so this is a ceiling, not disk used.
OSD_FILE_BYTES=$((16 << 30))
BUCKET=lsvblk
REGION=lsvblk-local
PACKAGES=(ceph-mon ceph-osd ceph-mgr radosgw ceph-common curl)
# How long `up`, a restart or `down` may take before we give up (seconds).
START_TIMEOUT_S=180
STOP_TIMEOUT_S=30

CONF=$CEPH_DIR/ceph.conf
ENV_FILE=$CEPH_DIR/s3.env
LOCK_FILE=$CEPH_DIR.lock
# Every user of the cluster (`use`, the tests) holds this shared; `use` takes
# the cluster down only if it can get it exclusively.
USERS_LOCK=$CEPH_DIR.users
export CEPH_CONF=$CONF

log() { printf 'ceph.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
now_s() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now_s)" 'BEGIN { printf "%.1f", b - a }'; }

# --- packages -------------------------------------------------------------

install_packages() {
  local missing=() pkg started
  for pkg in "${PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing packages (${missing[*]}); run as root to install them"
  log "installing ${missing[*]}"
  started=$(now_s)
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  log "packages installed in $(since "$started") s"
}

# --- processes ------------------------------------------------------------
# A daemon NAME (mon.a, mgr.x, osd.N, rgw) runs in the foreground of its own
# session; its pid is in run/NAME.pid. A pid counts as ours only if its
# command line names our ceph.conf (pids get reused).

pid_of() {
  local file=$CEPH_DIR/run/$1.pid pid
  [ -f "$file" ] || return 1
  pid=$(cat "$file")
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "-c $CONF " || return 1
  echo "$pid"
}

running() { pid_of "$1" >/dev/null; }

# start_daemon NAME BINARY ARGS...
start_daemon() {
  local name=$1 binary=$2
  shift 2
  running "$name" && return 0
  # The subshell drops our lock descriptors (a daemon must not hold them)
  # and becomes the daemon: $! is its pid.
  (
    exec 9>&-
    [ -z "${users_fd:-}" ] || exec {users_fd}>&-
    exec setsid "$binary" -f -c "$CONF" "$@" </dev/null >>"$CEPH_DIR/log/$name.out" 2>&1
  ) &
  echo $! >"$CEPH_DIR/run/$name.pid"
}

# stop_daemons SIGNAL NAME...: signal them all at once (each takes ~2 s to
# exit, radosgw ~6 s), wait until they are gone, SIGKILL any that lingers.
stop_daemons() {
  local signal=$1 name pid pids=() deadline=$((SECONDS + STOP_TIMEOUT_S))
  shift
  for name in "$@"; do
    if pid=$(pid_of "$name"); then
      kill "-$signal" "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        log "pid $pid ignored SIG$signal for ${STOP_TIMEOUT_S} s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
      fi
      sleep 0.1
    done
  done
  for name in "$@"; do rm -f "$CEPH_DIR/run/$name.pid"; done
}

all_daemons() {
  local i
  echo rgw
  for ((i = 0; i < OSD_COUNT; i++)); do echo "osd.$i"; done
  echo mgr.x mon.a
}

# --- waiting ----------------------------------------------------------------

# wait_for WHAT COMMAND...: retry COMMAND until it succeeds or START_TIMEOUT_S passes.
wait_for() {
  local what=$1 deadline=$((SECONDS + START_TIMEOUT_S))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${START_TIMEOUT_S} s waiting for $what (logs: $CEPH_DIR/log)"
    sleep 0.2
  done
}

ceph_cli() { timeout 20 ceph --connect-timeout 10 "$@"; }

osd_is_up() { ceph_cli osd dump --format json | grep -q "\"osd\":$1,\"uuid\":\"[^\"]*\",\"up\":1"; }

# The S3 endpoint answers a signed request (curl signs with SigV4; radosgw
# wants the payload hash header, which curl 7.88 leaves out).
s3() {
  local method=$1 path=$2
  shift 2
  # shellcheck disable=SC1090
  (source "$ENV_FILE" && curl -sf --max-time 10 -X "$method" -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' \
    --aws-sigv4 "aws:amz:$AWS_REGION:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
    "$@" "$AWS_ENDPOINT_URL$path")
}

s3_put_probe() { printf 'probe' | s3 PUT "/$BUCKET/.ceph-sh-probe" --data-binary @- -H 'Content-Type: application/octet-stream'; }

# --- bootstrap ------------------------------------------------------------

write_conf() {
  cat >"$CONF" <<EOF
# Written by ci/ceph.sh: a throwaway test cluster on loopback.
[global]
fsid = $(cat /proc/sys/kernel/random/uuid)
mon_host = [v2:127.0.0.1:$MON_PORT]
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_msgr1 = false
ms_bind_ipv6 = false
# No cephx: loopback only, and nothing to provision.
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
auth_allow_insecure_global_id_reclaim = false
mon_warn_on_insecure_global_id_reclaim_allowed = false
keyring = $CEPH_DIR/keyring
run_dir = $CEPH_DIR/run
crash_dir = $CEPH_DIR/crash
log_file = $CEPH_DIR/log/\$name.log
mon_cluster_log_file = $CEPH_DIR/log/cluster.log
admin_socket = $CEPH_DIR/run/\$name.asok
# All OSDs share one host: replicate across OSDs, and count each OSD as a
# failure reporter so a killed one is marked down at once.
osd_crush_chooseleaf_type = 0
mon_osd_reporter_subtree_level = osd
mon_osd_min_down_reporters = 1
osd_pool_default_size = 3
osd_pool_default_min_size = 2
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
mon_warn_on_pool_no_redundancy = false
# The disk may be fuller than Ceph's 30% free default likes.
mon_data_avail_warn = 2
mon_data_avail_crit = 1
# Faster map updates: bootstrap in ~12 s instead of ~30 s.
paxos_propose_interval = 0.05

[mon]
mon_data = $CEPH_DIR/mon.\$id

[mgr]
mgr_data = $CEPH_DIR/mgr.\$id

[osd]
osd_data = $CEPH_DIR/osd.\$id
osd_objectstore = bluestore
# BlueStore makes a sparse file "block" in osd_data.
bluestore_block_create = true
bluestore_block_size = $OSD_FILE_BYTES
bluestore_fsck_on_mkfs = false
bluestore_fsck_on_mount = false
# Recover a restarted OSD in seconds, not minutes.
osd_recovery_sleep_hdd = 0
osd_recovery_sleep_hybrid = 0

[client.rgw.s3]
# tcp_nodelay: without it a small response (a 4 KiB ranged GET, a lease
# HEAD) waits on Nagle for the client's delayed ACK: ~40 ms each.
rgw_frontends = beast endpoint=127.0.0.1:$RGW_PORT tcp_nodelay=1
rgw_data = $CEPH_DIR/rgw
# Overwritten and deleted objects' data is reclaimed after a minute, not
# two hours: the benchmark overwrites gigabytes.
rgw_gc_obj_min_wait = 60
rgw_gc_processor_period = 60
# radosgw asks for "secure" monitor sessions by default, which need cephx.
ms_mon_client_mode = crc
EOF
}

bootstrap() {
  local i pids=()
  rm -rf "$CEPH_DIR"
  mkdir -p "$CEPH_DIR"/{run,log,crash,rgw,mon.a,mgr.x}
  touch "$CEPH_DIR/keyring"
  write_conf
  monmaptool --create --fsid "$(sed -n 's/^fsid = //p' "$CONF")" \
    --addv a "[v2:127.0.0.1:$MON_PORT]" "$CEPH_DIR/monmap" >/dev/null
  ceph-mon -c "$CONF" -i a --mkfs --monmap "$CEPH_DIR/monmap" >/dev/null
  start_daemon mon.a ceph-mon -i a
  wait_for "the monitor" ceph_cli mon stat
  start_daemon mgr.x ceph-mgr -i x
  for ((i = 0; i < OSD_COUNT; i++)); do
    mkdir -p "$CEPH_DIR/osd.$i"
    uuid=$(cat /proc/sys/kernel/random/uuid)
    [ "$(ceph_cli osd new "$uuid")" = "$i" ] || die "ceph osd new did not give id $i"
    # mkfs of the three OSDs in parallel: mostly waiting on fsync.
    ceph-osd -c "$CONF" -i "$i" --mkfs --osd-uuid "$uuid" >"$CEPH_DIR/log/osd.$i.mkfs" 2>&1 &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || die "mkfs of osd.$i failed: $(tail -5 "$CEPH_DIR/log/osd.$i.mkfs")"
  done
  start_osds
  wait_for "OSDs up" all_osds_up
  start_daemon rgw radosgw -n client.rgw.s3
  create_s3_user
  wait_for "the S3 endpoint" s3 PUT "/$BUCKET"
  touch "$CEPH_DIR/ready"
}

start_osds() {
  local i
  for ((i = 0; i < OSD_COUNT; i++)); do start_daemon "osd.$i" ceph-osd -i "$i"; done
}

all_osds_up() {
  local i
  for ((i = 0; i < OSD_COUNT; i++)); do osd_is_up "$i" || return 1; done
}

# A fresh random key pair per cluster, in hex (nothing to quote).
random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }
create_s3_user() {
  local access secret
  access=$(random_hex 10 | tr a-f A-F)
  secret=$(random_hex 20)
  radosgw-admin -c "$CONF" user create --uid lsvblk --display-name "lsvblk tests" \
    --access-key "$access" --secret-key "$secret" >/dev/null
  (
    umask 077
    cat >"$ENV_FILE" <<EOF
AWS_ENDPOINT_URL=http://127.0.0.1:$RGW_PORT
AWS_ACCESS_KEY_ID=$access
AWS_SECRET_ACCESS_KEY=$secret
AWS_REGION=$REGION
LSVBLK_S3_BUCKET=$BUCKET
EOF
  )
}

# --- commands ---------------------------------------------------------------

cmd_up() {
  local started
  install_packages
  started=$(now_s)
  if [ -f "$CEPH_DIR/ready" ]; then
    # Set up before: start whatever is not running (a killed OSD, a stopped
    # radosgw, or everything after a reboot). A no-op when all is up.
    local stopped=0 name
    for name in $(all_daemons); do running "$name" || stopped=1; done
    if [ "$stopped" -eq 0 ] && s3_put_probe >/dev/null 2>&1; then
      log "already up ($(endpoint))"
      return 0
    fi
    log "restarting the daemons that are not running"
    start_daemon mon.a ceph-mon -i a
    start_daemon mgr.x ceph-mgr -i x
    start_osds
    wait_for "OSDs up" all_osds_up
    start_daemon rgw radosgw -n client.rgw.s3
  else
    stop_all
    log "bootstrapping a new cluster in $CEPH_DIR"
    bootstrap
  fi
  wait_for "a first S3 PUT" s3_put_probe
  log "up in $(since "$started") s: S3 at $(endpoint), bucket $BUCKET"
}

endpoint() { sed -n 's/^AWS_ENDPOINT_URL=//p' "$ENV_FILE"; }

# shellcheck disable=SC2046
stop_all() { stop_daemons TERM $(all_daemons); }

cmd_down() {
  local started leftover
  started=$(now_s)
  [ -d "$CEPH_DIR" ] || { log "not set up (no $CEPH_DIR)"; return 0; }
  stop_all
  # shellcheck disable=SC2009 # pgrep -f takes a regex; this is a fixed string
  leftover=$(ps -eo pid=,args= | grep -F -- "-c $CONF " | grep -v grep || true)
  [ -z "$leftover" ] || die "still running after down: $leftover"
  rm -rf "$CEPH_DIR"
  log "down in $(since "$started") s; nothing left running"
}

cmd_status() {
  local name ok=0
  [ -f "$CEPH_DIR/ready" ] || { echo "not set up (no $CEPH_DIR/ready)"; return 3; }
  for name in $(all_daemons); do
    if running "$name"; then
      printf '%-6s running (pid %s)\n' "$name" "$(pid_of "$name")"
    else
      printf '%-6s STOPPED\n' "$name"
      ok=1
    fi
  done
  if running mon.a; then
    ceph_cli health || ok=1
  fi
  if s3_put_probe >/dev/null 2>&1; then
    echo "S3     $(endpoint) answers (bucket $BUCKET)"
  else
    echo "S3     $(endpoint) does NOT answer"
    ok=1
  fi
  return "$ok"
}

cmd_env() {
  [ -f "$ENV_FILE" ] || die "no cluster: run ci/ceph.sh up first"
  local line
  while IFS= read -r line; do
    printf 'export %s=%q\n' "${line%%=*}" "${line#*=}"
  done <"$ENV_FILE"
  printf 'export LSVBLK_CEPH_DIR=%q\n' "$CEPH_DIR"
}

osd_id() {
  if ! [[ ${1:-} =~ ^[0-9]+$ ]] || [ "$1" -ge "$OSD_COUNT" ]; then
    die "OSD number must be 0..$((OSD_COUNT - 1))"
  fi
  echo "$1"
}

cmd_osd_kill() {
  local id
  id=$(osd_id "${1:-}")
  running "osd.$id" || die "osd.$id is not running"
  stop_daemons KILL "osd.$id"
  log "osd.$id killed (SIGKILL)"
}

cmd_osd_start() {
  local id
  id=$(osd_id "${1:-}")
  start_daemon "osd.$id" ceph-osd -i "$id"
  wait_for "osd.$id up" osd_is_up "$id"
  log "osd.$id up"
}

cmd_rgw_stop() {
  stop_daemons TERM rgw
  log "radosgw stopped"
}

cmd_rgw_start() {
  start_daemon rgw radosgw -n client.rgw.s3
  wait_for "the S3 endpoint" s3_put_probe
  log "radosgw up"
}

# A key pair of the S3 user that a test can revoke under a running daemon
# (the user's own keys stay, so other tests go on).
cmd_key_add() {
  [ $# -eq 2 ] || die "usage: ci/ceph.sh key-add ACCESS SECRET"
  radosgw-admin -c "$CONF" key create --uid lsvblk --key-type s3 \
    --access-key "$1" --secret-key "$2" >/dev/null
  log "S3 key $1 added"
}

cmd_key_rm() {
  [ $# -eq 1 ] || die "usage: ci/ceph.sh key-rm ACCESS"
  radosgw-admin -c "$CONF" key rm --uid lsvblk --key-type s3 --access-key "$1" >/dev/null
  log "S3 key $1 revoked"
}

cmd_bucket_create() {
  [ $# -eq 1 ] || die "usage: ci/ceph.sh bucket-create NAME"
  s3 PUT "/$1" >/dev/null || die "cannot create bucket $1"
  log "bucket $1 created"
}

cmd_bucket_rm() {
  [ $# -eq 1 ] || die "usage: ci/ceph.sh bucket-rm NAME"
  [ "$1" != "$BUCKET" ] || die "the shared bucket $BUCKET stays (other tests use it)"
  radosgw-admin -c "$CONF" bucket rm --bucket "$1" --purge-objects >/dev/null
  log "bucket $1 deleted with its objects"
}

# use CMD...: the cluster for the length of CMD (ci/test.sh, the benchmark).
# Takes it down afterwards (also when CMD fails or we are interrupted) only
# if a `use` started it and no other `use` still runs. CMD sees
# LSVBLK_CEPH_IN_USE=1.
cmd_use() {
  [ $# -gt 0 ] || die "usage: ci/ceph.sh use CMD [ARGS...]"
  local status=0
  mkdir -p "$(dirname "$CEPH_DIR")"
  exec {users_fd}>>"$USERS_LOCK"
  flock -s "$users_fd"
  use_started_it=0
  [ -f "$CEPH_DIR/ready" ] && [ ! -f "$CEPH_DIR/started-by-use" ] || use_started_it=1
  trap use_release EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  with_lock cmd_up
  [ "$use_started_it" -eq 0 ] || touch "$CEPH_DIR/started-by-use"
  LSVBLK_CEPH_IN_USE=1 "$@" || status=$?
  [ "$status" -eq 0 ] || use_failed_report
  return "$status"
}

# What a failed command leaves for its reader: the cluster's state and the
# free space under it (a full cluster or disk blocks every PUT, and a remote
# FLUSH then fails only after --store-wait).
use_failed_report() {
  log "the command failed (exit $status); the cluster and the disk now:"
  ceph_cli -s >&2 || log "ceph -s failed"
  ceph_cli df >&2 || log "ceph df failed"
  df -h "$CEPH_DIR" >&2 || true
  du -sh "$CEPH_DIR" >&2 || true
}

use_release() {
  if [ "$use_started_it" -eq 1 ] && flock -n -x "$users_fd"; then
    with_lock cmd_down
  else
    log "leaving the cluster up (started by 'up', or still in use)"
  fi
}

# Serialize commands that start or stop daemons.
with_lock() {
  mkdir -p "$(dirname "$LOCK_FILE")"
  (
    flock 9
    "$@"
  ) 9>>"$LOCK_FILE"
}

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}

[ $# -ge 1 ] || usage
command=$1
shift
case "$command" in
  up) with_lock cmd_up ;;
  down) with_lock cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  osd-kill) with_lock cmd_osd_kill "$@" ;;
  osd-start) with_lock cmd_osd_start "$@" ;;
  rgw-stop) with_lock cmd_rgw_stop ;;
  rgw-start) with_lock cmd_rgw_start ;;
  key-add) cmd_key_add "$@" ;;
  key-rm) cmd_key_rm "$@" ;;
  bucket-create) cmd_bucket_create "$@" ;;
  bucket-rm) cmd_bucket_rm "$@" ;;
  use) cmd_use "$@" ;;
  -h | --help | help) usage ;;
  *) log "unknown command: $command"; usage ;;
esac
