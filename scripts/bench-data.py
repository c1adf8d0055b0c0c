#!/usr/bin/env python3
"""Deterministic data generator for scripts/bench.

Writes a tree of files under --out and prints a one-line JSON summary
({"files": N, "bytes": B, "dirs": D, "duplicates": K, ...}) on stdout.
The same --kind/--files/--size-mb/--seed always gives byte-identical files.

Kinds:
  throughput  --files N files totalling about --size-mb MiB, of mixed sizes
              (4 KiB .. tens of MiB): incompressible random data, compressible
              log-like text, files that mix both, and exact duplicates of
              earlier files (so compression and dedup both matter).
  many        --files N small files of 1-8 KiB, mostly text, some random,
              some duplicates, ~500 files per directory.
  changes     edit an EXISTING tree under --out in place: --modify M files
              get new bytes (half overwritten in the middle, half appended
              to), --add A new 1-8 KiB text files appear in existing
              directories and --delete D other files are removed. Which files,
              and the new bytes, depend only on --seed and the tree's sorted
              file list, so the same tree always gets the same edits.
  empty-tree  --dirs D directories of --per-dir F empty files each
              (d0000/f0000 ...): many paths, no content, for the
              diff-memory case.
  touch       set the mtime of the first --count N files of the sorted file
              list under --out (0: every file) to 1600000000 + --step S
              seconds: N mtime-only changes, no content written.
"""

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import sys

BLOCK = 1 << 20  # random data is produced in 1 MiB pieces


def random_bytes(tag: bytes, n: int) -> bytes:
    """n pseudo-random (incompressible) bytes, a pure function of tag."""
    out = []
    for i in range(0, n, BLOCK):
        m = min(BLOCK, n - i)
        out.append(hashlib.shake_128(tag + b":" + str(i).encode()).digest(m))
    return b"".join(out)


def make_corpus(rng: random.Random, lines: int) -> list:
    """Log-like text lines; files are random draws of them (compressible)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 10))) for _ in range(600)]
    levels = ["INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"]
    corpus = []
    for _ in range(lines):
        words = " ".join(rng.choice(vocab) for _ in range(rng.randint(3, 12)))
        corpus.append(
            "2024-%02d-%02dT%02d:%02d:%02d.%03dZ %-5s host%02d %s[%d]: %s id=%08x took=%dms\n"
            % (
                rng.randint(1, 12), rng.randint(1, 28), rng.randint(0, 23),
                rng.randint(0, 59), rng.randint(0, 59), rng.randint(0, 999),
                rng.choice(levels), rng.randint(1, 40), rng.choice(vocab),
                rng.randint(100, 65000), words, rng.getrandbits(32), rng.randint(0, 5000),
            )
        )
    return corpus


def text_bytes(rng: random.Random, corpus: list, avg_len: float, n: int) -> bytes:
    if n <= 0:
        return b""
    k = int(n / avg_len) + 2
    data = "".join(rng.choices(corpus, k=k)).encode()
    while len(data) < n:  # rare: draws came out short
        data += "".join(rng.choices(corpus, k=k)).encode()
    return data[:n]


def mixed_bytes(rng: random.Random, corpus: list, avg_len: float, tag: bytes, n: int) -> bytes:
    """Alternating 64 KiB runs of text and random data (compresses ~2x)."""
    parts, off, i = [], 0, 0
    while off < n:
        m = min(64 * 1024, n - off)
        if i % 2 == 0:
            parts.append(text_bytes(rng, corpus, avg_len, m))
        else:
            parts.append(random_bytes(tag + b":mixed:" + str(i).encode(), m))
        off += m
        i += 1
    return b"".join(parts)


def throughput_sizes(rng: random.Random, files: int, total: int) -> list:
    sizes = []
    for _ in range(files):
        r = rng.random()
        if r < 0.70:
            lo, hi = 4 << 10, 256 << 10
        elif r < 0.95:
            lo, hi = 256 << 10, 8 << 20
        else:
            lo, hi = 8 << 20, 64 << 20
        sizes.append(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    scale = total / sum(sizes) if sizes else 1.0
    return [max(1, int(s * scale)) for s in sizes]


def generate(kind: str, files: int, size_mb: float, seed: int, out: str) -> dict:
    rng = random.Random(f"{kind}:{seed}")
    corpus = make_corpus(rng, 20000)
    avg_len = sum(len(s) for s in corpus) / len(corpus)
    os.makedirs(out, exist_ok=True)

    if kind == "throughput":
        sizes = throughput_sizes(rng, files, int(size_mb * (1 << 20)))
        per_dir = 50
        weights = (("random", 0.35), ("text", 0.40), ("mixed", 0.15), ("dup", 0.10))
    else:
        sizes = [rng.randint(1024, 8192) for _ in range(files)]
        per_dir = 500
        weights = (("text", 0.75), ("random", 0.20), ("dup", 0.05))

    kinds = [k for k, _ in weights]
    probs = [w for _, w in weights]
    written = []  # (path, size) of non-duplicate files, duplicate sources
    stats = {"kind": kind, "seed": seed, "files": 0, "bytes": 0, "dirs": 0,
             "duplicates": 0, "random": 0, "text": 0, "mixed": 0}
    dirs = set()
    for i, size in enumerate(sizes):
        d = os.path.join(out, "d%03d" % (i // (per_dir * 20)), "s%03d" % ((i // per_dir) % 20))
        if d not in dirs:
            os.makedirs(d, exist_ok=True)
            dirs.add(d)
        what = rng.choices(kinds, weights=probs)[0]
        if what == "dup" and not written:
            what = "text"
        ext = {"random": ".bin", "text": ".log", "mixed": ".dat", "dup": ".copy"}[what]
        path = os.path.join(d, "f%07d%s" % (i, ext))
        tag = f"{kind}:{seed}:{i}".encode()
        if what == "dup":
            src, size = written[rng.randrange(len(written))]
            shutil.copyfile(src, path)
            stats["duplicates"] += 1
        else:
            if what == "random":
                data = random_bytes(tag, size)
            elif what == "text":
                data = text_bytes(rng, corpus, avg_len, size)
            else:
                data = mixed_bytes(rng, corpus, avg_len, tag, size)
            with open(path, "wb") as f:
                f.write(data)
            written.append((path, size))
            stats[what] += 1
        stats["files"] += 1
        stats["bytes"] += size
    # a few empty files and an empty directory: edge cases every tool must keep
    if kind == "throughput" and files > 0:
        os.makedirs(os.path.join(out, "empty-dir"), exist_ok=True)
        for j in range(3):
            open(os.path.join(out, "d000", "empty%d" % j), "wb").close()
            stats["files"] += 1
        dirs.add(os.path.join(out, "empty-dir"))
    stats["dirs"] = len(dirs)
    return stats


def list_tree(root: str):
    """Every regular file and every directory under root, sorted."""
    files, dirs = [], []
    for d, subdirs, names in os.walk(root):
        subdirs.sort()
        dirs.append(d)
        for n in sorted(names):
            p = os.path.join(d, n)
            if os.path.isfile(p) and not os.path.islink(p):
                files.append(p)
    return sorted(files), sorted(dirs)


def apply_changes(root: str, modify: int, add: int, delete: int, seed: int) -> dict:
    """Deterministic edits of an existing tree (see --kind changes)."""
    rng = random.Random(f"changes:{seed}")
    corpus = make_corpus(rng, 2000)
    avg_len = sum(len(s) for s in corpus) / len(corpus)
    files, dirs = list_tree(root)
    if modify + delete > len(files):
        raise SystemExit(f"bench-data: --modify + --delete = {modify + delete} but {root} holds {len(files)} files")
    picked = rng.sample(files, modify + delete)
    stats = {"kind": "changes", "seed": seed, "files_before": len(files),
             "modified": 0, "added": 0, "deleted": 0, "bytes_written": 0}
    for i, path in enumerate(picked[:modify]):
        tag = f"changes:{seed}:mod:{i}".encode()
        n = rng.randint(64, 1024)
        data = random_bytes(tag, n)
        if i % 2 == 0:  # overwrite bytes in the middle; the size stays the same
            size = os.path.getsize(path)
            with open(path, "r+b") as f:
                f.seek(rng.randrange(max(1, size - n)) if size > n else 0)
                f.write(data)
        else:  # append
            with open(path, "ab") as f:
                f.write(data)
        stats["modified"] += 1
        stats["bytes_written"] += n
    for path in picked[modify:]:
        os.unlink(path)
        stats["deleted"] += 1
    leaf_dirs = [d for d in dirs if d != root] or [root]
    for i in range(add):
        d = leaf_dirs[rng.randrange(len(leaf_dirs))]
        path = os.path.join(d, "new%05d.log" % i)
        data = text_bytes(rng, corpus, avg_len, rng.randint(1024, 8192))
        with open(path, "xb") as f:
            f.write(data)
        stats["added"] += 1
        stats["bytes_written"] += len(data)
    return stats


def empty_tree(root: str, dirs: int, per_dir: int) -> dict:
    """dirs x per_dir empty files (see --kind empty-tree)."""
    os.makedirs(root, exist_ok=True)
    for d in range(dirs):
        dp = os.path.join(root, "d%04d" % d)
        os.mkdir(dp)
        for f in range(per_dir):
            # os.open + close is the cheapest way to make an empty file
            os.close(os.open(os.path.join(dp, "f%04d" % f), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    return {"kind": "empty-tree", "dirs": dirs, "files": dirs * per_dir}


def touch(root: str, count: int, step: int) -> dict:
    """New mtime on the first `count` files (see --kind touch)."""
    files, _ = list_tree(root)
    picked = files if count == 0 else files[:count]
    if count > len(files):
        raise SystemExit(f"bench-data: --count {count} but {root} holds {len(files)} files")
    t = (1600000000 + step) * 1000000000
    for path in picked:
        os.utime(path, ns=(t, t), follow_symlinks=False)
    return {"kind": "touch", "touched": len(picked), "files": len(files), "step": step}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=("throughput", "many", "changes", "empty-tree", "touch"), required=True)
    p.add_argument("--files", type=int, help="number of files (throughput, many)")
    p.add_argument("--size-mb", type=float, default=0, help="total size in MiB (throughput only)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True)
    p.add_argument("--modify", type=int, default=50, help="files to modify (changes only)")
    p.add_argument("--add", type=int, default=25, help="files to add (changes only)")
    p.add_argument("--delete", type=int, default=25, help="files to delete (changes only)")
    p.add_argument("--dirs", type=int, default=1000, help="directories (empty-tree only)")
    p.add_argument("--per-dir", type=int, default=1000, help="empty files per directory (empty-tree only)")
    p.add_argument("--count", type=int, default=0, help="files to touch, 0 for all (touch only)")
    p.add_argument("--step", type=int, default=1, help="mtime offset in seconds (touch only)")
    a = p.parse_args()
    if a.kind == "empty-tree":
        if a.dirs < 1 or a.per_dir < 1:
            p.error("--dirs and --per-dir must be >= 1")
        print(json.dumps(empty_tree(a.out, a.dirs, a.per_dir)))
        return 0
    if a.kind == "touch":
        if a.count < 0:
            p.error("--count must be >= 0")
        if not os.path.isdir(a.out):
            p.error(f"--out {a.out} is not an existing directory (--kind touch edits a tree)")
        print(json.dumps(touch(a.out, a.count, a.step)))
        return 0
    if a.kind == "changes":
        if min(a.modify, a.add, a.delete) < 0:
            p.error("--modify, --add and --delete must be >= 0")
        if not os.path.isdir(a.out):
            p.error(f"--out {a.out} is not an existing directory (--kind changes edits a tree)")
        print(json.dumps(apply_changes(a.out, a.modify, a.add, a.delete, a.seed)))
        return 0
    if a.files is None or a.files < 1:
        p.error("--files must be >= 1")
    if a.kind == "throughput" and a.size_mb <= 0:
        p.error("--size-mb must be > 0 for --kind throughput")
    print(json.dumps(generate(a.kind, a.files, a.size_mb, a.seed, a.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
