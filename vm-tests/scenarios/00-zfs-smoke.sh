#!/bin/bash
# 00-zfs-smoke: proves the harness. Loads zfs, makes a pool on a loop file,
# snapshots a dataset before and after a set of changes, and records the raw
# output of the zfs commands the ZFS source parses (zfs diff -FHt, zfs list,
# zfs get, zfs hold/holds/release) in $N2S_OUT. These recordings are the
# parser fixtures in tests/fixtures/zfs/. Then a btrfs smoke on a loop file,
# and n2s-agent --version to show the host-built binary runs in the guest.
set -euo pipefail
OUT=${N2S_OUT:?run me through vm-tests/run}
step() { printf '\n--- %s\n' "$*"; }

step "n2s-agent --version"
n2s-agent --version | tee "$OUT/n2s-agent-version.txt"

step "modprobe zfs"
start=$(date +%s)
modprobe zfs
echo "modprobe zfs took $(($(date +%s) - start))s"
zfs version | tee "$OUT/zfs-version.txt"

POOL=tp
truncate -s 1G /var/tmp/p.img
cleanup() {
  zpool destroy -f "$POOL" 2>/dev/null || true
  rm -f /var/tmp/p.img
}
trap cleanup EXIT
step "zpool create -f $POOL /var/tmp/p.img"
zpool create -f "$POOL" /var/tmp/p.img
zfs create "$POOL/fs"
MNT=$(zfs get -Hp -o value mountpoint "$POOL/fs")
zfs get -Hp -o value mountpoint "$POOL/fs" >"$OUT/zfs-get-mountpoint-1.txt"
echo "mountpoint: $MNT"

step "files for @a"
cd "$MNT"
mkdir -p olddir/inner dir/sub keepdir tree/a/b
echo hello >keep.txt
echo modify-me >mod.txt
echo remove-me >gone.txt
echo rename-me >old-name.txt
echo inner >olddir/inner/file.txt
echo perm >perm.txt
echo linked >hl-src.txt
echo deep >dir/sub/deep.txt
echo t1 >tree/a/b/t1.txt
echo t2 >tree/a/t2.txt
echo original >replace-me.txt
echo in-keepdir >keepdir/f.txt
sync
zfs snapshot "$POOL/fs@a"

step "changes for @b"
echo more >>mod.txt                       # M: content
echo new >added.txt                       # +
rm gone.txt                               # -
mv old-name.txt new-name.txt              # R: file
mv olddir newdir                          # R: directory (subtree implied)
chmod 600 perm.txt                        # M: metadata only
echo tab >$'tab\there.txt'                # + name with a tab
echo space >'space name.txt'              # + name with a space
echo newline >$'new\nline.txt'            # + name with a newline
echo bad >$'bad\xffbyte.txt'              # + name with a non-UTF-8 byte
ln hl-src.txt hl-dst.txt                  # + hardlink (link count of the source changes)
mkdir addeddir && echo x >addeddir/f.txt  # + directory and a file in it
ln -s keep.txt symlink                    # + symlink
mv dir/sub/deep.txt dir/deep-moved.txt    # R: across directories
sync
zfs snapshot "$POOL/fs@b"

step "changes for @c"
rm -r tree                                # - a whole tree
echo replaced >replace-me.txt.tmp         # temp-file rename over an existing file
mv replace-me.txt.tmp replace-me.txt
mkfifo fifo                               # + fifo
touch -m -d @1000000000 keep.txt          # M: mtime only
mv $'tab\there.txt' $'tab\tthere.txt'     # R: escaped name to escaped name
echo x >>newdir/inner/file.txt            # M inside a renamed directory
rm hl-src.txt                             # - one name of a hardlinked file
sync
zfs snapshot "$POOL/fs@c"
cd /

step "zfs diff -FHt $POOL/fs@a $POOL/fs@b"
zfs diff -FHt "$POOL/fs@a" "$POOL/fs@b" >"$OUT/zfs-diff-1.txt"
cat -A "$OUT/zfs-diff-1.txt"
step "zfs diff -FHt $POOL/fs@b $POOL/fs@c"
zfs diff -FHt "$POOL/fs@b" "$POOL/fs@c" >"$OUT/zfs-diff-2.txt"
cat -A "$OUT/zfs-diff-2.txt"

step "zfs hold / holds / release"
zfs hold n2s "$POOL/fs@a"
zfs hold n2s-other "$POOL/fs@a"
zfs hold n2s "$POOL/fs@b"
zfs holds -H "$POOL/fs@a" >"$OUT/zfs-holds-1.txt"
cat -A "$OUT/zfs-holds-1.txt"
zfs holds -Hp "$POOL/fs@a" "$POOL/fs@b" >"$OUT/zfs-holds-2.txt"
cat -A "$OUT/zfs-holds-2.txt"

step "zfs list (with holds in place)"
zfs list -Hp -t snapshot -o name,guid,createtxg,creation,userrefs "$POOL/fs" >"$OUT/zfs-list-1.txt"
cat -A "$OUT/zfs-list-1.txt"

# A transcript of the hold life cycle, with stderr and exit codes: what a
# pruner sees when it tries to destroy a held snapshot, and the errors of
# holding twice or releasing a tag that is not there.
{
  run() {
    printf '$ %s\n' "$*"
    local rc=0
    "$@" 2>&1 || rc=$?
    printf '[exit %s]\n' "$rc"
  }
  run zfs hold n2s "$POOL/fs@a"
  run zfs destroy "$POOL/fs@a"
  run zfs release n2s "$POOL/fs@a"
  run zfs release n2s "$POOL/fs@a"
  run zfs holds -H "$POOL/fs@a"
  run zfs release n2s-other "$POOL/fs@a"
  run zfs holds -H "$POOL/fs@a"
  run zfs list -Hp -t snapshot -o name,userrefs "$POOL/fs"
  run zfs diff -FHt "$POOL/fs@a" "$POOL/fs@nonexistent"
  run zfs get -Hp -o value mountpoint "$POOL/nonexistent"
} >"$OUT/zfs-hold-transcript-1.txt"
cat "$OUT/zfs-hold-transcript-1.txt"
zfs release n2s "$POOL/fs@b"
[ -z "$(zfs holds -H "$POOL/fs@a" "$POOL/fs@b")" ] || { echo "holds remain"; exit 1; }

step "btrfs smoke"
truncate -s 1G /var/tmp/b.img
mkfs.btrfs -q -f /var/tmp/b.img
mkdir -p /mnt/b
mount -o loop /var/tmp/b.img /mnt/b
btrfs subvolume create /mnt/b/vol >/dev/null
echo hi >/mnt/b/vol/f
btrfs subvolume snapshot -r /mnt/b/vol /mnt/b/s1 >/dev/null
echo more >>/mnt/b/vol/f
btrfs subvolume snapshot -r /mnt/b/vol /mnt/b/s2 >/dev/null
bytes=$(btrfs send --no-data -q -p /mnt/b/s1 /mnt/b/s2 | wc -c)
echo "btrfs send --no-data -p s1 s2: $bytes bytes"
[ "$bytes" -gt 0 ]
umount /mnt/b
rm -f /var/tmp/b.img

echo
echo "00-zfs-smoke: ok"
