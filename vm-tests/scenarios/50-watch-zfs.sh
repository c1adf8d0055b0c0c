#!/bin/bash
# 50-watch-zfs: `n2s-agent watch` on real ZFS, where inotify cannot see
# .zfs/snapshot: each snapshot made while it runs is found by its poll and
# backed up within seconds, in order, and restores identical; SIGTERM while
# it waits is a clean exit 0.
set -euo pipefail
OUT=${N2S_OUT:?run me through vm-tests/run}
W=$(mktemp -d /var/tmp/n2s-watch.XXXXXX)
# shellcheck source=vm-tests/lib.bash
. "$(dirname "${BASH_SOURCE[0]}")/../lib.bash"
same() { diff -r --no-dereference "$1" "$2" >/dev/null || fail "$2 differs from $1"; }

modprobe zfs
truncate -s 1G "$W/pool.img"
POOL=n2swt
zpool create -f -O mountpoint=/$POOL "$POOL" "$W/pool.img"
pid=
trap '[ -z "$pid" ] || kill "$pid" 2>/dev/null || true; zpool destroy -f "$POOL" 2>/dev/null || true; rm -rf "$W"' EXIT
zfs create "$POOL/fs"
FS=/$POOL/fs
zfs_agent_config "$W" "$POOL"
"${N2S[@]}" init

# waitfor TEXT SECS: until the watch's output holds TEXT.
waitfor() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    grep -q "$1" "$W/watch.out" && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$W/watch.out"; fail "watch died before: $1"; }
    sleep 0.1
  done
  cat "$W/watch.out"
  fail "no '$1' within $2 s"
}

step "a snapshot made before watch starts is taken at once"
mkdir -p "$FS/d"
head -c 200000 /dev/urandom >"$FS/d/a"
zfs snapshot "$POOL/fs@w1"
"${N2S[@]}" watch --poll 1 --debounce 0.5 >"$W/watch.out" 2>&1 &
pid=$!
waitfor "snapshot w1 stored as changeset 1" 60

step "snapshots made while it runs are backed up within seconds, by zfs diff"
for n in 2 3; do
  echo "version $n" >"$FS/d/b"
  zfs snapshot "$POOL/fs@w$n"
  start=$(date +%s)
  waitfor "snapshot w$n stored as changeset $n (zfs diff)" 30
  took=$(($(date +%s) - start))
  [ "$took" -le 15 ] || fail "w$n took $took s"
  echo "w$n backed up $took s after the snapshot"
done

step "SIGTERM while idle: exit 0"
kill -TERM "$pid"
status=0
wait "$pid" || status=$?
pid=
[ "$status" -eq 0 ] || { cat "$W/watch.out"; fail "watch exited $status after SIGTERM"; }
cp "$W/watch.out" "$OUT/watch-zfs.out"
"${N2S[@]}" -q restore w3 --dataset "$POOL/fs" --target "$W/r3"
same "$FS/.zfs/snapshot/w3" "$W/r3"
echo "50-watch-zfs: PASS"
