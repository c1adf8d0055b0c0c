#!/bin/bash
# 30-inflight: the snapshot of an unfinished changeset, on real ZFS.
# - It is held from before its changes are listed: a pruner cannot destroy
#   it while its upload is interrupted, and the next run finishes it.
# - With holds off, a destroyed in-flight snapshot does not stop the
#   dataset for good: its changeset is abandoned (status failed, named),
#   and the next snapshot is diffed against the last complete one.
set -euo pipefail
OUT=${N2S_OUT:?run me through vm-tests/run}
W=$(mktemp -d /var/tmp/n2s-inflight.XXXXXX)
# shellcheck source=vm-tests/lib.bash
. "$(dirname "${BASH_SOURCE[0]}")/../lib.bash"
same() { diff -r --no-dereference "$1" "$2" >/dev/null || fail "$2 differs from $1"; }

modprobe zfs
truncate -s 1G "$W/pool.img"
POOL=n2sif
zpool create -f -O mountpoint=/$POOL "$POOL" "$W/pool.img"
trap 'zpool destroy -f "$POOL" 2>/dev/null || true; rm -rf "$W"' EXIT
zfs create "$POOL/fs"
FS=/$POOL/fs
zfs_agent_config "$W" "$POOL"
"${N2S[@]}" init
held() { grep -q n2s-agent <<<"$(zfs holds -H "$POOL/fs@$1")"; }

step "s1 backed up; s2's backup killed after its listing"
mkdir -p "$FS/d"
for i in 1 2 3 4 5; do head -c 100000 /dev/urandom >"$FS/d/f$i"; done
zfs snapshot "$POOL/fs@s1"
"${N2S[@]}" backup
echo changed >"$FS/d/f1"
rm "$FS/d/f2"
zfs snapshot "$POOL/fs@s2"
if N2S_FAULT=listed:1 "${N2S[@]}" backup; then fail "the fault point did not kill the run"; fi
"${N2S[@]}" status | tee "$OUT/inflight-status.txt"
grep -q unfinished "$OUT/inflight-status.txt" || fail "no unfinished changeset after the kill"

step "the in-flight snapshot is held: a pruner cannot destroy it"
held s2 || fail "s2 was not held before its changes were listed"
if zfs destroy "$POOL/fs@s2" 2>/dev/null; then fail "the in-flight snapshot s2 was destroyed"; fi
"${N2S[@]}" backup
"${N2S[@]}" -q restore s2 --dataset "$POOL/fs" --target "$W/r2"
same "$FS/.zfs/snapshot/s2" "$W/r2"
held s2 || fail "the new base s2 is not held"
if held s1; then fail "the old base s1 is still held"; fi

step "holds off: the in-flight snapshot destroyed; the changeset is abandoned, and backups go on"
sed -i 's/^source = "zfs"$/source = "zfs"\nholds = false/' "$W/agent.toml"
echo three >"$FS/d/f3"
zfs snapshot "$POOL/fs@s3"
if N2S_FAULT=listed:1 "${N2S[@]}" backup; then fail "the fault point did not kill the run"; fi
if held s3; then fail "holds = false still held s3"; fi
zfs destroy "$POOL/fs@s3"
echo four >"$FS/d/f4"
zfs snapshot "$POOL/fs@s4"
if "${N2S[@]}" backup 2>"$W/abandon.err"; then fail "an abandoned changeset must be reported (exit 1)"; fi
cat "$W/abandon.err"
grep -q 'snapshot s3 (changeset 3) was abandoned' "$W/abandon.err" || fail "the abandoned changeset is not named"
"${N2S[@]}" list --json >"$OUT/inflight-list.json"
"${N2S[@]}" list | tee "$OUT/inflight-list.txt"
grep -q '"status": "failed"' "$OUT/inflight-list.json" || fail "s3 is not listed as failed"
grep -Eq 's4 +complete' "$OUT/inflight-list.txt" || fail "s4 is not complete"
grep -q 'zfs diff' <<<"$(grep ' s4 ' "$OUT/inflight-list.txt")" || fail "s4 was not diffed against s2"
"${N2S[@]}" -q restore s4 --dataset "$POOL/fs" --target "$W/r4"
same "$FS/.zfs/snapshot/s4" "$W/r4"
"${N2S[@]}" backup || fail "the run after an abandonment must succeed"
"${N2S[@]}" verify --level full
echo "30-inflight: PASS"
