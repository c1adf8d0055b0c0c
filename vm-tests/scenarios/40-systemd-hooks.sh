#!/bin/bash
# 40-systemd-hooks: the hardened units under the guest's real systemd (PID 1
# here, unlike on the test host), against real ZFS and btrfs.
# - systemd-analyze security in the guest rates n2s-agent.service at or
#   below the exposure README documents;
# - n2s-agent.service backs up a ZFS dataset (zfs diff, zfs hold, reading
#   .zfs/snapshot from the service's mount namespace) and a btrfs subvolume
#   (btrfs send), with the repository in a ReadWritePaths= drop-in as README
#   says; each snapshot restores identical;
# - the zfs-auto-snapshot hook, on a systemd host, starts
#   n2s-agent@DATASET.service (no N2S_HOOK_WAIT), which backs up the next
#   snapshot; n2s-agent@vol.service does the same for btrfs;
# - no run logs a permission error (a capability or system call the
#   sandbox denies).
set -euo pipefail
OUT=${N2S_OUT:?run me through vm-tests/run}
SHARE=${N2S_SHARE:?run me through vm-tests/run}
# shellcheck source=vm-tests/lib.bash
. "$(dirname "${BASH_SOURCE[0]}")/../lib.bash"
W=$(mktemp -d /var/tmp/n2s-scn.XXXXXX)
# The btrfs is mounted outside /var/tmp and /tmp: PrivateTmp= gives the
# service a /var/tmp of its own, where a mount under the host's is not seen.
BT=$(mktemp -d /mnt/n2s-bt.XXXXXX)
POOL=n2ssd
REPO=/srv/n2s-repo
AGENT=$(command -v n2s-agent)
cleanup() {
  systemctl stop n2s-agent.service "n2s-agent@*.service" 2>/dev/null || true
  zpool destroy -f "$POOL" 2>/dev/null || true
  umount "$BT" 2>/dev/null || true
  rm -rf "$W" "$BT" "$REPO" /etc/n2s /var/lib/n2s /etc/systemd/system/n2s-agent*
  systemctl daemon-reload || true
}
trap cleanup EXIT

[ -d /run/systemd/system ] || fail "systemd is not PID 1 in the guest"

step "install the units (naming this binary) and a config"
for u in n2s-agent.service n2s-agent@.service n2s-agent.timer; do
  sed "s|/usr/local/bin/n2s-agent|$AGENT|g" "$SHARE/systemd/$u" >"/etc/systemd/system/$u"
done
for d in n2s-agent.service.d n2s-agent@.service.d; do
  mkdir -p "/etc/systemd/system/$d"
  printf '[Service]\nReadWritePaths=%s\n' "$REPO" >"/etc/systemd/system/$d/repo.conf"
done
systemctl daemon-reload
systemd-analyze security n2s-agent.service --no-pager | tee "$OUT/systemd-security.txt" | tail -n 1
exposure=$(sed -n 's/.*Overall exposure level for n2s-agent.service: \([0-9.]*\).*/\1/p' "$OUT/systemd-security.txt")
documented=2.5
awk -v e="$exposure" -v d="$documented" 'BEGIN { exit !(e != "" && e <= d) }' ||
  fail "exposure in the guest is '$exposure', above the documented $documented"

modprobe zfs
truncate -s 1G "$W/pool.img"
zpool create -f -O mountpoint=/$POOL "$POOL" "$W/pool.img"
zfs create "$POOL/fs"
FS=/$POOL/fs
mkdir -p "$FS/dir"
for i in 1 2 3 4 5; do head -c $((i * 40000)) /dev/urandom >"$FS/dir/f$i"; done
echo private >"$FS/secret" && chown 1234:1234 "$FS/secret" && chmod 000 "$FS/secret"
zfs snapshot "$POOL/fs@a"

truncate -s 1G "$W/bt.img"
mkfs.btrfs -q "$W/bt.img"
mount -o loop "$W/bt.img" "$BT"
btrfs subvolume create "$BT/vol" >/dev/null
mkdir "$BT/snaps"
head -c 300000 /dev/urandom >"$BT/vol/data"
echo private >"$BT/vol/secret" && chown 1234:1234 "$BT/vol/secret" && chmod 000 "$BT/vol/secret"
btrfs subvolume snapshot -r "$BT/vol" "$BT/snaps/s1" >/dev/null

mkdir -p /etc/n2s
cat >/etc/n2s/agent.toml <<EOT
repo = "$REPO"
key_file = "/etc/n2s/key"
state_dir = "/var/lib/n2s"
[[dataset]]
name = "$POOL/fs"
source = "zfs"
[[dataset]]
name = "vol"
source = "btrfs"
path = "$BT/vol"
snapshot_dir = "$BT/snaps"
EOT
N2S=(n2s-agent --config /etc/n2s/agent.toml)
"${N2S[@]}" init

# unit_done UNIT: wait until the unit's journal says its run ended, and fail
# unless it succeeded. (Not `systemctl show`: an inactive unit is unloaded
# after its run, and a reloaded one shows default properties.)
unit_done() {
  local i log
  for i in $(seq 1 600); do
    log=$(journalctl -u "$1" --no-pager -o cat 2>/dev/null || true)
    if grep -q 'Failed with result' <<<"$log"; then
      tail -n 30 <<<"$log"
      fail "$1 failed"
    fi
    if grep -q 'Deactivated successfully' <<<"$log"; then
      return 0
    fi
    sleep 1
  done
  systemctl status --no-pager "$1" || true
  fail "$1 did not end within 600 tries (see its status above)"
}

step "n2s-agent.service backs up both datasets"
systemctl start n2s-agent.service
unit_done n2s-agent.service
"${N2S[@]}" list | tee "$OUT/systemd-list-1.txt"
"${N2S[@]}" -q restore a --dataset "$POOL/fs" --target "$W/ra"
diff -r --no-dereference "$FS/.zfs/snapshot/a" "$W/ra" || fail "ZFS snapshot a restores different"
"${N2S[@]}" -q restore s1 --dataset vol --target "$W/rs1"
diff -r --no-dereference "$BT/snaps/s1" "$W/rs1" || fail "btrfs snapshot s1 restores different"
grep -q n2s-agent <<<"$(zfs holds -H "$POOL/fs@a")" || fail "the service made no zfs hold on @a"

step "the zfs-auto-snapshot hook starts n2s-agent@$POOL/fs.service"
echo changed >>"$FS/dir/f1"
rm "$FS/dir/f2"
zfs snapshot "$POOL/fs@b"
unit="n2s-agent@$(systemd-escape "$POOL/fs").service"
"$SHARE/hooks/zfs-auto-snapshot-post" "$POOL/fs" b
unit_done "$unit"
"${N2S[@]}" list --dataset "$POOL/fs" | tee "$OUT/systemd-list-zfs.txt"
grep -q 'zfs diff' "$OUT/systemd-list-zfs.txt" || fail "@b was not backed up by zfs diff under the unit"
"${N2S[@]}" -q restore b --dataset "$POOL/fs" --target "$W/rb"
diff -r --no-dereference "$FS/.zfs/snapshot/b" "$W/rb" || fail "ZFS snapshot b restores different"

step "n2s-agent@vol.service backs up the next btrfs snapshot by send"
echo more >>"$BT/vol/data"
btrfs subvolume snapshot -r "$BT/vol" "$BT/snaps/s2" >/dev/null
systemctl start n2s-agent@vol.service
unit_done n2s-agent@vol.service
"${N2S[@]}" list --dataset vol | tee "$OUT/systemd-list-btrfs.txt"
grep -q 'send' "$OUT/systemd-list-btrfs.txt" || fail "s2 was not backed up by btrfs send under the unit"
"${N2S[@]}" -q restore s2 --dataset vol --target "$W/rs2"
diff -r --no-dereference "$BT/snaps/s2" "$W/rs2" || fail "btrfs snapshot s2 restores different"

step "no permission error in the units' journal"
journalctl -u 'n2s-agent*' --no-pager >"$OUT/systemd-journal.txt"
if grep -iE 'permission denied|operation not permitted|EPERM|EACCES' "$OUT/systemd-journal.txt"; then
  fail "a sandboxed run hit a permission error (see above)"
fi
echo "systemd units: ok"
