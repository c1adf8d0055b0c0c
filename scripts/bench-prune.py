#!/usr/bin/env python3
"""Helpers for scripts/bench's prune case (scripts/bench-prune).

  serve   --upstream HOST:PORT --log FILE --ready FILE --bytes FILE
          scripts/bench-s3-proxy.py's counting proxy (no delay; the same
          request log, so its `count` reads it), which also counts the bytes
          it forwards in each direction, HTTP heads included. After every
          change in the number of open connections it rewrites --bytes with
          {"up": B, "down": B, "open": N, "connections": N} (up: client to
          server, down: server to client, totals since it started). A phase's
          bytes are the difference of two readings taken with no connection
          open (`bytes --wait`).
  bytes   FILE [--wait S]
          Print FILE once no connection is open (waiting up to S seconds,
          default 10, for the proxy to see the client's connections close).
  churn   --root DIR --round R [--seed S] [--modify M] [--add A] [--delete D]
          One round of deterministic edits of the tree under DIR: M files
          get entirely new content (1-8 KiB: random bytes for .bin files,
          log-like text otherwise), A new text files appear in existing
          directories (named after the round, so rounds never collide) and D
          other files are removed. Which files, and their bytes, depend only
          on --seed, --round and the tree's sorted file list. Prints a JSON
          summary.

Only the standard library is used; the text and random generators are
scripts/bench-data.py's.
"""

import argparse
import asyncio
import importlib.util
import json
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def load(name, file):
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, file))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --- byte-counting proxy ---------------------------------------------------------------------


class Counted:
    """A StreamReader stand-in that adds what it reads to COUNTS[key]."""

    def __init__(self, src, key, counts):
        self.src, self.key, self.counts = src, key, counts

    async def read(self, n=-1):
        data = await self.src.read(n)
        self.counts[self.key] += len(data)
        return data


def serve(args):
    proxy = load("bench_s3_proxy", "bench-s3-proxy.py")
    counts = {"up": 0, "down": 0, "open": 0, "connections": 0}
    orig_pump = proxy.pump

    def dump():
        tmp = args.bytes + ".tmp"
        with open(tmp, "w") as f:
            json.dump(counts, f, sort_keys=True)
        os.replace(tmp, args.bytes)

    async def pump(src, dst, delay, parser, hold_until):
        # serve() starts one pump per direction; only the client's has a parser
        key = "up" if parser is not None else "down"
        counts["open"] += 1
        if key == "up":
            counts["connections"] += 1
        dump()
        try:
            await orig_pump(Counted(src, key, counts), dst, delay, parser, hold_until)
        finally:
            counts["open"] -= 1
            dump()

    proxy.pump = pump  # serve() looks `pump` up in its module at call time
    dump()
    ns = argparse.Namespace(upstream=args.upstream, delay_ms=0.0, log=args.log, ready=args.ready, port=0)
    try:
        asyncio.run(proxy.serve(ns))
    except KeyboardInterrupt:
        pass
    return 0


def read_bytes(args):
    deadline = time.time() + args.wait
    while True:
        try:
            with open(args.file) as f:
                c = json.load(f)
        except (OSError, ValueError):
            c = None
        if c is not None and (c["open"] == 0 or time.time() >= deadline):
            json.dump(c, sys.stdout, sort_keys=True)
            print()
            return 0 if c["open"] == 0 else 1
        if time.time() >= deadline:
            print("bench-prune: no byte counts in %s" % args.file, file=sys.stderr)
            return 1
        time.sleep(0.05)


# --- churn -----------------------------------------------------------------------------------


def churn(args):
    data = load("bench_data", "bench-data.py")
    rng = random.Random("prune-churn:%d:%d" % (args.seed, args.round))
    corpus = data.make_corpus(rng, 2000)
    avg_len = sum(len(s) for s in corpus) / len(corpus)
    files, dirs = data.list_tree(args.root)
    if args.modify + args.delete > len(files):
        raise SystemExit("bench-prune: --modify + --delete = %d but %s holds %d files"
                         % (args.modify + args.delete, args.root, len(files)))
    picked = rng.sample(files, args.modify + args.delete)
    stats = {"round": args.round, "files_before": len(files), "modified": 0, "added": 0,
             "deleted": 0, "bytes_written": 0}
    for i, path in enumerate(picked[: args.modify]):
        n = rng.randint(1024, 8192)
        if path.endswith(".bin"):
            body = data.random_bytes(b"prune:%d:%d:%d" % (args.seed, args.round, i), n)
        else:
            body = data.text_bytes(rng, corpus, avg_len, n)
        with open(path, "wb") as f:
            f.write(body)
        stats["modified"] += 1
        stats["bytes_written"] += n
    for path in picked[args.modify:]:
        os.unlink(path)
        stats["deleted"] += 1
    leaf_dirs = [d for d in dirs if d != args.root] or [args.root]
    for i in range(args.add):
        d = leaf_dirs[rng.randrange(len(leaf_dirs))]
        body = data.text_bytes(rng, corpus, avg_len, rng.randint(1024, 8192))
        with open(os.path.join(d, "r%03dn%05d.log" % (args.round, i)), "xb") as f:
            f.write(body)
        stats["added"] += 1
        stats["bytes_written"] += len(body)
    stats["files_after"] = stats["files_before"] - stats["deleted"] + stats["added"]
    json.dump(stats, sys.stdout, sort_keys=True)
    print()
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--upstream", required=True)
    s.add_argument("--log", required=True)
    s.add_argument("--ready", required=True)
    s.add_argument("--bytes", required=True)
    b = sub.add_parser("bytes")
    b.add_argument("file")
    b.add_argument("--wait", type=float, default=10.0)
    c = sub.add_parser("churn")
    c.add_argument("--root", required=True)
    c.add_argument("--round", type=int, required=True)
    c.add_argument("--seed", type=int, default=1)
    c.add_argument("--modify", type=int, default=1960)
    c.add_argument("--add", type=int, default=20)
    c.add_argument("--delete", type=int, default=20)
    a = p.parse_args()
    if a.cmd == "churn" and min(a.modify, a.add, a.delete) < 0:
        p.error("--modify, --add and --delete must be >= 0")
    return {"serve": serve, "bytes": read_bytes, "churn": churn}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
