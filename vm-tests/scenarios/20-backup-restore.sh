#!/bin/bash
# 20-backup-restore: n2s-agent against real ZFS (and btrfs) in the guest.
# - ZFS: 10 snapshots with random mutations, backed up in three runs; every
#   snapshot restored and compared with <mountpoint>/.zfs/snapshot/<name>;
#   the hold moves to the last backed-up snapshot and blocks its destruction;
#   a destroyed base falls back to a walk; a rollback that re-creates a
#   backed-up name is reported and kept apart; a zfs diff over its time limit
#   falls back to a walk.
# - btrfs: the same series on a loop-device btrfs, and the deleted-base fallback.
# Seeded: set N2S_SEED to replay; the seed is printed first.
set -euo pipefail
OUT=${N2S_OUT:?run me through vm-tests/run}
SEED=${N2S_SEED:-$(( $(date +%s) % 32768 ))}
RANDOM=$SEED
echo "seed $SEED (replay with N2S_SEED=$SEED)"
W=$(mktemp -d /var/tmp/n2s-scn.XXXXXX)
# shellcheck source=vm-tests/lib.bash
. "$(dirname "${BASH_SOURCE[0]}")/../lib.bash"

# What a restore must reproduce, as text: type, mode, owner, link count (files),
# size (files), mtime, symlink target, per path; the root's own too.
describe() {
  (
    cd "$1"
    stat -c 'root %a %u %g %Y' .
    find . -mindepth 1 -type f -printf 'f %m %U %G %n %s %T@ %p\n'
    find . -mindepth 1 -type d -printf 'd %m %U %G %T@ %p\n'
    find . -mindepth 1 -type l -printf 'l %U %G %T@ %p -> %l\n'
  ) | LC_ALL=C sort
}
compare_trees() {
  local want=$1 got=$2
  if ! diff <(describe "$want") <(describe "$got") >"$W/meta.diff"; then
    head -40 "$W/meta.diff"
    fail "metadata of $got differs from $want"
  fi
  diff -r --no-dereference "$want" "$got" >/dev/null || fail "content of $got differs from $want"
}

pick() { # a random regular file below $1 (NUL-safe), or nothing
  local -a f
  mapfile -d '' f < <(find "$1" -type f -print0 | LC_ALL=C sort -z)
  if [ "${#f[@]}" -gt 0 ]; then printf '%s' "${f[RANDOM % ${#f[@]}]}"; fi
}
pickdir() {
  local -a d
  mapfile -d '' d < <(find "$1" -mindepth 1 -maxdepth 1 -type d -name 'dir-*' -print0 | LC_ALL=C sort -z)
  if [ "${#d[@]}" -gt 0 ]; then printf '%s' "${d[RANDOM % ${#d[@]}]}"; fi
}
populate() {
  local r=$1
  mkdir -p "$r/base/sub"
  for i in $(seq 1 15); do head -c $((RANDOM * 4)) /dev/urandom >"$r/base/sub/f$i"; done
  printf 'tab' >"$r/$(printf 'with\ttab')"
  printf 'nl' >"$r/$(printf 'with\nnewline')"
  printf 'ff' >"$r/$(printf 'bad\377byte')"
  printf 'sp' >"$r/with space"
  ln "$r/base/sub/f1" "$r/hardlink"
  ln -s base/sub "$r/symlink"
  ln -s nowhere "$r/dangling"
}
mutate() {
  # Each change applies only when its target exists; `|| true` keeps set -e
  # from ending the scenario when one does not.
  local r=$1 s=$2 n f d
  for n in $(seq 1 $((1 + RANDOM % 4))); do
    f=$(pick "$r")
    d=$(pickdir "$r")
    case $((RANDOM % 11)) in
      0) head -c $((RANDOM * 3)) /dev/urandom >"$r/new-$s-$RANDOM" ;;
      1) [ -z "$f" ] || head -c 100 /dev/urandom >>"$f" ;;
      2) if [ -n "$f" ] && [ "$(find "$r" -type f | wc -l)" -gt 4 ]; then rm -f "$f"; fi ;;
      3) [ -z "$f" ] || mv "$f" "$r/moved $s-$RANDOM" ;;
      4) d="$r/dir-$s-$RANDOM/sub"; mkdir -p "$d"; echo inner >"$d/f"; ln -s f "$d/l" ;;
      5) [ -z "$d" ] || rm -rf "$d" ;;
      6) [ -z "$d" ] || mv "$d" "$r/dir-renamed-$s-$RANDOM" ;;
      7) [ -z "$f" ] || ln "$f" "$r/link-$s-$RANDOM" ;;
      8) [ -z "$f" ] || { chmod 600 "$f" && chown 1000:1000 "$f"; } ;;
      9) [ -z "$f" ] || touch -m -d "@$((1000000000 + RANDOM))" "$f" ;;
      *) [ -z "$f" ] || truncate -s 1 "$f" ;;
    esac
  done
  return 0
}

# ---------------------------------------------------------------- ZFS
step "ZFS pool on a loop file"
modprobe zfs
truncate -s 2G "$W/pool.img"
POOL=n2szt
zpool create -f -O mountpoint=/$POOL "$POOL" "$W/pool.img"
cleanup() {
  zpool destroy -f "$POOL" 2>/dev/null || true
  umount "$W/bt" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
zfs create "$POOL/fs"
FS=/$POOL/fs
zfs_agent_config "$W" "$POOL"
"${N2S[@]}" init

step "10 snapshots with random mutations, backed up in three runs"
populate "$FS"
for i in 01 02 03 04 05 06 07 08 09 10; do
  [ "$i" = 01 ] || mutate "$FS" "$i"
  zfs snapshot "$POOL/fs@s$i"
  case $i in 03|06|10) "${N2S[@]}" backup ;; esac
done
"${N2S[@]}" list | tee "$OUT/zfs-list.txt"
[ "$(grep -c 'zfs diff' "$OUT/zfs-list.txt")" -eq 9 ] || fail "expected 9 changesets made by zfs diff"
grep -q 'walk (first snapshot)' "$OUT/zfs-list.txt" || fail "the first snapshot should be walked"

step "every snapshot restores identical to .zfs/snapshot/<name>"
for i in 01 02 03 04 05 06 07 08 09 10; do
  "${N2S[@]}" -q restore "s$i" --dataset "$POOL/fs" --target "$W/r$i"
  compare_trees "$FS/.zfs/snapshot/s$i" "$W/r$i"
  rm -rf "$W/r$i"
done
echo "all 10 snapshots identical"

step "holds: on the last backed-up snapshot only, and they block zfs destroy"
grep -q n2s-agent <<<"$(zfs holds -H "$POOL/fs@s10")" || fail "s10 is not held"
if grep -q n2s-agent <<<"$(zfs holds -H "$POOL/fs@s06")"; then fail "the hold on s06 was not released"; fi
if zfs destroy "$POOL/fs@s10" 2>/dev/null; then fail "a held snapshot was destroyed"; fi
"${N2S[@]}" status | tee "$OUT/zfs-status.txt"
grep -q "held snapshots.*$POOL/fs@s10" "$OUT/zfs-status.txt" || fail "status does not show the hold"

step "the base snapshot destroyed: the next one is walked, and says so"
zfs release n2s-agent "$POOL/fs@s10"
zfs destroy "$POOL/fs@s10"
mutate "$FS" 11
zfs snapshot "$POOL/fs@s11"
"${N2S[@]}" backup
"${N2S[@]}" list --json >"$OUT/zfs-list-11.json"
grep -q '"method": "walk (fallback: the previous snapshot s10 is gone)"' "$OUT/zfs-list-11.json" || fail "no fallback recorded"
"${N2S[@]}" -q restore s11 --dataset "$POOL/fs" --target "$W/r11"
compare_trees "$FS/.zfs/snapshot/s11" "$W/r11"

step "a rollback that re-creates a backed-up snapshot name is reported, never diffed against"
zfs release n2s-agent "$POOL/fs@s11"
zfs rollback -r "$POOL/fs@s09"
mutate "$FS" 12
zfs snapshot "$POOL/fs@s11"
if "${N2S[@]}" backup 2>"$W/rollback.err"; then fail "a rollback must fail the run loudly"; fi
cat "$W/rollback.err"
grep -q 'rolled back' "$W/rollback.err" || fail "the rollback is not named"
"${N2S[@]}" list | tee "$OUT/zfs-list-rollback.txt"
grep -q 's11~2' "$OUT/zfs-list-rollback.txt" || fail "the re-created s11 is not kept apart"
"${N2S[@]}" -q restore 's11~2' --dataset "$POOL/fs" --target "$W/r11b"
compare_trees "$FS/.zfs/snapshot/s11" "$W/r11b"

step "zfs diff over its time limit: walked instead"
sed -i 's/^source = "zfs"$/source = "zfs"\ndiff_timeout_secs = 0/' "$W/agent.toml"
mutate "$FS" 13
zfs snapshot "$POOL/fs@s13"
"${N2S[@]}" backup
"${N2S[@]}" list --json >"$OUT/zfs-list-13.json"
grep -q 'took longer than 0s' "$OUT/zfs-list-13.json" || fail "the time limit fallback is not recorded"
"${N2S[@]}" -q restore s13 --dataset "$POOL/fs" --target "$W/r13"
compare_trees "$FS/.zfs/snapshot/s13" "$W/r13"

step "holds = false: the next backup places no hold"
sed -i 's/^diff_timeout_secs = 0$/holds = false/' "$W/agent.toml"
mutate "$FS" 14
zfs snapshot "$POOL/fs@s14"
"${N2S[@]}" backup
if grep -q n2s-agent <<<"$(zfs holds -H "$POOL/fs@s14")"; then fail "holds = false still held s14"; fi
"${N2S[@]}" verify --level full

# ---------------------------------------------------------------- btrfs
step "btrfs: the same series on a loop device"
truncate -s 1G "$W/bt.img"
mkfs.btrfs -q "$W/bt.img"
mkdir -p "$W/bt"
mount -o loop "$W/bt.img" "$W/bt"
btrfs subvolume create "$W/bt/vol" >/dev/null
mkdir "$W/bt/snaps"
B=(n2s-agent --repo "$W/repo" --key-file "$W/key" --state-dir "$W/state")
BT=(backup --dataset btvol --source btrfs --path "$W/bt/vol" --snapshot-dir "$W/bt/snaps")
populate "$W/bt/vol"
for i in 01 02 03 04 05 06 07 08 09 10; do
  [ "$i" = 01 ] || mutate "$W/bt/vol" "$i"
  btrfs subvolume snapshot -r "$W/bt/vol" "$W/bt/snaps/s$i" >/dev/null
  case $i in 04|10) "${B[@]}" "${BT[@]}" ;; esac
done
"${B[@]}" list --dataset btvol | tee "$OUT/btrfs-list.txt"
[ "$(grep -c ' send$' "$OUT/btrfs-list.txt")" -eq 9 ] || fail "expected 9 changesets made by btrfs send"
for i in 01 02 03 04 05 06 07 08 09 10; do
  "${B[@]}" -q restore "s$i" --dataset btvol --target "$W/b$i"
  compare_trees "$W/bt/snaps/s$i" "$W/b$i"
  rm -rf "$W/b$i"
done
btrfs subvolume delete "$W/bt/snaps/s10" >/dev/null
mutate "$W/bt/vol" 11
btrfs subvolume snapshot -r "$W/bt/vol" "$W/bt/snaps/s11" >/dev/null
"${B[@]}" "${BT[@]}"
"${B[@]}" list --json --dataset btvol >"$OUT/btrfs-list-11.json"
grep -q 'walk (fallback: the previous snapshot s10 is gone)' "$OUT/btrfs-list-11.json" || fail "no btrfs fallback recorded"
"${B[@]}" -q restore s11 --dataset btvol --target "$W/b11"
compare_trees "$W/bt/snaps/s11" "$W/b11"
echo "btrfs: all identical"
echo "20-backup-restore: PASS"
