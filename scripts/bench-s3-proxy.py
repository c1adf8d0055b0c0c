#!/usr/bin/env python3
"""Counting, delaying TCP proxy and small S3 helpers for scripts/bench's s3 case.

  serve   --upstream HOST:PORT [--delay-ms D] [--log FILE] [--ready FILE]
          Listen on 127.0.0.1 (a free port, written to --ready) and forward
          every connection to the upstream S3 server, byte for byte. Each
          direction of every connection is held back by D ms (as `tc netem
          delay D` on loopback would: a request-response round trip costs 2*D
          more, and a new connection 2*D more for its handshake). Request
          heads are parsed as they pass (Content-Length and chunked bodies
          are skipped over, never changed) and one line per request is
          appended to --log: time, connection, method, target, Range header.
  count   LOG [--skip N] [--bucket B]
          Classify the requests in LOG (after its first N lines) into PUT,
          GET, HEAD, LIST, POST and DELETE as S3 means them, and print one
          JSON object. `data_*` keys describe the GETs of pack objects
          (keys with a /data/ component): how many, how many distinct
          objects and ranges, and "runs": maximal sequences of consecutive
          GETs of the same object (one run = one chunk range of a file,
          when one file is restored).
  size    --endpoint URL --bucket B [--prefix P]
          Sum the sizes of the objects under P (anonymous ListObjectsV2);
          prints {"objects": N, "bytes": B, "by_dir": {...}}.
  delete  --endpoint URL --bucket B --prefix P
          Delete every object under P (anonymous DELETE, one per object);
          prints {"deleted": N}.

The anonymous requests work on a SeaweedFS server without identities (its
default), which is what the bench starts. Only the standard library is used.
"""

import argparse
import asyncio
import itertools
import json
import os
import socket
import sys
import time
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

READ = 1 << 18  # bytes per read from a socket
QUEUE = 256  # reads held per direction while delayed (at most 64 MiB)


class RequestParser:
    """Finds request heads in one connection's client-to-server bytes."""

    def __init__(self, conn, log):
        self.conn = conn
        self.log = log
        self.buf = bytearray()
        self.state = "head"  # head | body | chunk-size | chunk-data | trailer | broken
        self.remain = 0

    def feed(self, data):
        mv, pos, n = memoryview(data), 0, len(data)
        while self.state != "broken":
            if self.state in ("body", "chunk-data"):
                # bytes gathered earlier come first (pos == n whenever buf has any)
                take = min(self.remain, len(self.buf))
                del self.buf[:take]
                self.remain -= take
                take = min(self.remain, n - pos)
                pos += take
                self.remain -= take
                if self.remain > 0:
                    return
                self.state = "head" if self.state == "body" else "chunk-size"
                continue
            if pos < n:
                self.buf += mv[pos:]
                pos = n
            if not self.step():
                return

    def step(self):
        """One head, chunk-size or trailer line out of buf; False if it needs more bytes."""
        if self.state == "head":
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                if len(self.buf) > (1 << 16):
                    self.broken("request head over 64 KiB")
                return False
            head = bytes(self.buf[:i])
            del self.buf[: i + 4]
            self.request(head)
            return True
        i = self.buf.find(b"\r\n")
        if i < 0:
            if len(self.buf) > 4096:
                self.broken("chunk line over 4 KiB")
            return False
        line = bytes(self.buf[:i])
        del self.buf[: i + 2]
        if self.state == "trailer":
            if line == b"":
                self.state = "head"
            return True
        try:
            size = int(line.split(b";")[0].strip(), 16)
        except ValueError:
            self.broken("bad chunk size %r" % line[:40])
            return False
        if size == 0:
            self.state = "trailer"
        else:
            self.state = "chunk-data"
            self.remain = size + 2  # the data and its CRLF
        return True

    def broken(self, why):
        self.state = "broken"
        self.log.write("%.6f\t%d\t!\t%s\t-\n" % (time.time(), self.conn, why))
        self.log.flush()

    def request(self, head):
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) < 2:
            self.broken("bad request line %r" % lines[0][:60])
            return
        method, target = parts[0].decode("latin-1"), parts[1].decode("latin-1")
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers[k.strip().lower()] = v.strip()
        rng = headers.get(b"range", b"-").decode("latin-1")
        self.log.write("%.6f\t%d\t%s\t%s\t%s\n" % (time.time(), self.conn, method, target, rng))
        self.log.flush()
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            self.state = "chunk-size"
        else:
            try:
                n = int(headers.get(b"content-length", b"0"))
            except ValueError:
                self.broken("bad Content-Length")
                return
            if n > 0:
                self.state = "body"
                self.remain = n


async def pump(src, dst, delay, parser, hold_until):
    """Copy src to dst, each read held back until max(arrival, hold_until) + delay."""
    loop = asyncio.get_running_loop()
    if delay == 0:
        while True:
            data = await src.read(READ)
            if not data:
                break
            if parser:
                parser.feed(data)
            dst.write(data)
            await dst.drain()
    else:
        q = asyncio.Queue(maxsize=QUEUE)

        async def reader():
            while True:
                data = await src.read(READ)
                if data and parser:
                    parser.feed(data)
                await q.put((max(loop.time(), hold_until) + delay, data))
                if not data:
                    return

        task = asyncio.ensure_future(reader())
        try:
            while True:
                due, data = await q.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    break
                dst.write(data)
                await dst.drain()
        finally:
            task.cancel()
    if dst.can_write_eof():
        dst.write_eof()


def nodelay(writer):
    s = writer.get_extra_info("socket")
    if s is not None:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def serve(args):
    host, port = args.upstream.rsplit(":", 1)
    delay = args.delay_ms / 1000.0
    log = open(args.log, "a", buffering=1 << 16) if args.log else open(os.devnull, "w")
    ids = itertools.count(1)

    async def handle(creader, cwriter):
        loop = asyncio.get_running_loop()
        accepted = loop.time()
        conn = next(ids)
        nodelay(cwriter)
        try:
            ureader, uwriter = await asyncio.open_connection(host, int(port))
        except OSError:
            cwriter.close()
            return
        nodelay(uwriter)
        parser = RequestParser(conn, log)
        # The client's first bytes would have waited for a handshake (2 delays).
        up = asyncio.ensure_future(pump(creader, uwriter, delay, parser, accepted + 2 * delay))
        down = asyncio.ensure_future(pump(ureader, cwriter, delay, None, 0))
        try:
            await asyncio.gather(up, down)
        except (OSError, asyncio.IncompleteReadError, RuntimeError):
            pass
        finally:
            up.cancel()
            down.cancel()
            for w in (uwriter, cwriter):
                try:
                    w.close()
                except Exception:
                    pass

    server = await asyncio.start_server(handle, "127.0.0.1", args.port, reuse_address=True, backlog=256)
    actual = server.sockets[0].getsockname()[1]
    if args.ready:
        tmp = args.ready + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % actual)
        os.rename(tmp, args.ready)
    async with server:
        await server.serve_forever()


def classify(method, target, bucket):
    """(kind, key, query) of one request: kind is PUT GET HEAD LIST POST DELETE."""
    path, _, query = target.partition("?")
    if path.startswith("http://") or path.startswith("https://"):
        path = "/" + path.split("/", 3)[3] if path.count("/") >= 3 else "/"
    path = urllib.parse.unquote(path)
    parts = path.lstrip("/").split("/", 1)
    key = parts[1] if len(parts) > 1 else ""
    q = urllib.parse.parse_qs(query, keep_blank_values=True)
    if bucket and parts[0] != bucket:
        return None, key, q
    if method == "GET" and key == "" and "location" in q:
        return "GET", key, q  # GetBucketLocation
    if method == "GET" and (key == "" or "uploads" in q or "list-type" in q):
        return "LIST", key, q
    if method == "POST" and "delete" in q:
        return "DELETE", key, q  # DeleteObjects: one request, many keys
    if method in ("PUT", "GET", "HEAD", "POST", "DELETE"):
        return method, key, q
    return "OTHER", key, q


def count(args):
    kinds = {k: 0 for k in ("PUT", "GET", "HEAD", "LIST", "POST", "DELETE", "OTHER")}
    get_by_dir = {}
    data_gets, data_keys, data_ranges, runs, last = 0, set(), set(), 0, None
    broken = 0
    with open(args.log, errors="replace") as f:
        for i, line in enumerate(f):
            if i < args.skip:
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 5:
                continue
            _, _, method, target, rng = fields[:5]
            if method == "!":
                broken += 1
                continue
            kind, key, _ = classify(method, target, args.bucket)
            if kind is None:
                continue
            kinds[kind] += 1
            if kind == "GET":
                comps = key.split("/")
                top = "data" if "data" in comps[:-1] else (comps[-2] if len(comps) > 1 else "(top)")
                get_by_dir[top] = get_by_dir.get(top, 0) + 1
                if top == "data":
                    data_gets += 1
                    data_keys.add(key)
                    data_ranges.add((key, rng))
                    if key != last:
                        runs += 1
                    last = key
    out = dict(kinds)
    out["total"] = sum(kinds.values())
    out["get_by_dir"] = get_by_dir
    out["data_gets"] = data_gets
    out["data_objects"] = len(data_keys)
    out["data_ranges"] = len(data_ranges)
    out["data_runs"] = runs
    out["unparsed_connections"] = broken
    json.dump(out, sys.stdout, sort_keys=True)
    print()
    return 0


def list_objects(endpoint, bucket, prefix):
    token = None
    while True:
        q = {"list-type": "2", "prefix": prefix, "max-keys": "1000"}
        if token:
            q["continuation-token"] = token
        url = "%s/%s?%s" % (endpoint.rstrip("/"), bucket, urllib.parse.urlencode(q))
        with urllib.request.urlopen(url, timeout=120) as r:
            root = ET.fromstring(r.read())
        ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
        for c in root.iter(ns + "Contents"):
            yield c.find(ns + "Key").text, int(c.find(ns + "Size").text)
        if (root.findtext(ns + "IsTruncated") or "false").lower() != "true":
            return
        token = root.findtext(ns + "NextContinuationToken")
        if not token:
            return


def size(args):
    n, total, by_dir = 0, 0, {}
    for key, sz in list_objects(args.endpoint, args.bucket, args.prefix):
        n += 1
        total += sz
        rel = key[len(args.prefix):].lstrip("/")
        top = rel.split("/", 1)[0] if "/" in rel else "(top)"
        d = by_dir.setdefault(top, {"objects": 0, "bytes": 0})
        d["objects"] += 1
        d["bytes"] += sz
    json.dump({"objects": n, "bytes": total, "by_dir": by_dir}, sys.stdout, sort_keys=True)
    print()
    return 0


def delete(args):
    if not args.prefix:
        print("bench-s3-proxy: delete needs a non-empty --prefix", file=sys.stderr)
        return 2
    keys = [k for k, _ in list_objects(args.endpoint, args.bucket, args.prefix)]
    for k in keys:
        url = "%s/%s/%s" % (args.endpoint.rstrip("/"), args.bucket, urllib.parse.quote(k))
        req = urllib.request.Request(url, method="DELETE")
        with urllib.request.urlopen(req, timeout=120) as r:
            r.read()
    json.dump({"deleted": len(keys)}, sys.stdout)
    print()
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--upstream", required=True, help="HOST:PORT of the S3 server")
    s.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    s.add_argument("--delay-ms", type=float, default=0.0, help="delay of each direction, ms")
    s.add_argument("--log", help="append one line per request here")
    s.add_argument("--ready", help="write the listening port here once listening")
    c = sub.add_parser("count")
    c.add_argument("log")
    c.add_argument("--skip", type=int, default=0, help="ignore the first N lines")
    c.add_argument("--bucket", help="count only requests to this bucket")
    for name in ("size", "delete"):
        x = sub.add_parser(name)
        x.add_argument("--endpoint", required=True)
        x.add_argument("--bucket", required=True)
        x.add_argument("--prefix", default="")
    args = p.parse_args()
    if args.cmd == "serve":
        try:
            asyncio.run(serve(args))
        except KeyboardInterrupt:
            pass
        return 0
    return {"count": count, "size": size, "delete": delete}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
