#!/usr/bin/env python3
"""A differential check of HTTP/1.1 request parsing: canarygate, nginx and HAProxy, each in front of its own
recording backend, get the same malformed, ambiguous and smuggling-shaped requests. For each case the
report shows what each proxy answered and which requests reached its backend (count, method, normalised
target, body). A case is flagged when canarygate forwards a request that both others refuse, or
forwards something other than what both others forward (when they agree). Run through bench/differential.

The backends are lenient (bare LF line ends, `chunked` anywhere in Transfer-Encoding), as many real
backends are: a request smuggled past a proxy shows up there as an extra request.
"""
import argparse
import hashlib
import os
import posixpath
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

CRLF = "\r\n"


# === cases ===

def cases():
    """(category, description, raw bytes) for every case; `{n}` in a target is the case's token."""
    C = []

    def add(cat, desc, raw):
        C.append((cat, desc, raw))

    def req(head_lines, body="", method="POST", target="/t/p/c{n}/x", version="HTTP/1.1", eol=CRLF, host=True):
        lines = [f"{method} {target} {version}"]
        if host:
            lines.append("host: a")
        lines += head_lines
        return eol.join(lines) + eol + eol + body

    nxt = "GET /t/p/c{n}/next HTTP/1.1\r\nhost: a\r\n\r\n"
    smug = "GET /t/p/c{n}/smuggled HTTP/1.1\r\nhost: a\r\n\r\n"

    # --- Transfer-Encoding and Content-Length ---
    for v in ["5", " 5", "5 ", "05", "000000000005", "+5", "-5", "0x5", "5 5", "5,5", "5, 5", "5,6", "", "abc",
              "99999999999999999999", "5\t", "1e1"]:
        add("TE/CL", f"content-length {v!r}", req([f"content-length: {v}"], "hello") + nxt)
    add("TE/CL", "two equal content-length fields", req(["content-length: 5", "content-length: 5"], "hello") + nxt)
    add("TE/CL", "two different content-length fields", req(["content-length: 5", "content-length: 6"], "hello!") + nxt)
    add("TE/CL", "content-length shorter than the body", req(["content-length: 3"], "hello" + nxt.replace("\r\n", "\r\n", 1)))
    for te in ["chunked", "Chunked", "CHUNKED", " chunked", "chunked ", "\tchunked", "chunked, chunked", "gzip, chunked",
               "chunked, gzip", ",chunked", "chunked,", "identity", "identity, chunked", "xchunked", "chunkedx", "chunk",
               "\"chunked\"", "chunked;q=1", "gzip"]:
        add("TE/CL", f"transfer-encoding {te!r}", req([f"transfer-encoding: {te}"], "5\r\nhello\r\n0\r\n\r\n") + nxt)
    add("TE/CL", "two transfer-encoding fields chunked + chunked",
        req(["transfer-encoding: chunked", "transfer-encoding: chunked"], "5\r\nhello\r\n0\r\n\r\n") + nxt)
    add("TE/CL", "transfer-encoding identity then chunked fields",
        req(["transfer-encoding: identity", "transfer-encoding: chunked"], "5\r\nhello\r\n0\r\n\r\n") + nxt)
    add("TE/CL", "TE then CL", req(["transfer-encoding: chunked", "content-length: 4"], "5\r\nhello\r\n0\r\n\r\n") + nxt)
    add("TE/CL", "CL then TE", req(["content-length: 4", "transfer-encoding: chunked"], "5\r\nhello\r\n0\r\n\r\n") + nxt)
    add("TE/CL", "CL 0 with TE chunked and a smuggled request",
        req(["content-length: 0", "transfer-encoding: chunked"], "0\r\n\r\n" + smug))
    add("TE/CL", "TE with a space before the colon", req(["transfer-encoding : chunked", "content-length: 3"], "5\r\nhello\r\n0\r\n\r\n"))
    add("TE/CL", "TE with a tab before the colon", req(["transfer-encoding\t: chunked"], "5\r\nhello\r\n0\r\n\r\n"))
    add("TE/CL", "Transfer_Encoding (underscore)", req(["transfer_encoding: chunked", "content-length: 3"], "5\r\nhello\r\n0\r\n\r\n"))
    add("TE/CL", "TE folded onto the next line", req(["x-a: 1", " transfer-encoding: chunked"], "5\r\nhello\r\n0\r\n\r\n"))
    add("TE/CL", "TE value folded", req(["transfer-encoding:", " chunked"], "5\r\nhello\r\n0\r\n\r\n"))
    add("TE/CL", "TE in an HTTP/1.0 request", req(["transfer-encoding: chunked"], "5\r\nhello\r\n0\r\n\r\n", version="HTTP/1.0"))
    add("TE/CL", "TE with a NUL byte", req(["transfer-encoding: chunked\x00"], "5\r\nhello\r\n0\r\n\r\n"))
    add("TE/CL", "TE with a vertical tab", req(["transfer-encoding:\x0bchunked"], "5\r\nhello\r\n0\r\n\r\n"))
    add("TE/CL", "GET with a content-length body", req(["content-length: 5"], "hello", method="GET") + nxt)
    add("TE/CL", "GET with a chunked body", req(["transfer-encoding: chunked"], "5\r\nhello\r\n0\r\n\r\n", method="GET") + nxt)

    # --- chunk sizes, extensions and trailers ---
    te = ["transfer-encoding: chunked"]
    chunk_cases = [
        ("a valid chunked body with extensions and trailers", "5;a=b;c=\"d e\"\r\nhello\r\n0\r\nx-t: 1\r\n\r\n"),
        ("an empty chunk-size line", "\r\n\r\n" + smug),
        ("an empty chunk-size line before data", "\r\nhello\r\n0\r\n\r\n"),
        ("a bare LF in a chunk extension", "2;\nxx\r\n0\r\n\r\n" + smug),
        ("a bare CR in a chunk extension", "2;a\rb\r\nxx\r\n0\r\n\r\n"),
        ("a bare LF after the chunk size", "2\nxx\r\n0\r\n\r\n"),
        ("a bare LF after chunk data", "2\r\nxx\n0\r\n\r\n"),
        ("no CRLF after chunk data", "2\r\nxx0\r\n\r\n"),
        ("chunk data longer than its size", "2\r\nxxxx\r\n0\r\n\r\n" + smug),
        ("a trailer section ended by a bare LF", "2\r\nxx\r\n0\r\n\n" + smug),
        ("a trailer line ended by a bare LF", "2\r\nxx\r\n0\r\nx-t: 1\n\r\n"),
        ("a folded trailer", "2\r\nxx\r\n0\r\nx-t: 1\r\n folded\r\n\r\n"),
        ("a trailer without a colon", "2\r\nxx\r\n0\r\nnocolon\r\n\r\n"),
        ("a huge trailer section", "2\r\nxx\r\n0\r\n" + "x-t: " + "v" * 20000 + "\r\n\r\n"),
        ("chunk size 2^63", "8000000000000000\r\nxx\r\n0\r\n\r\n"),
        ("chunk size 2^64-1", "ffffffffffffffff\r\nxx\r\n0\r\n\r\n"),
        ("chunk size 2^64 (17 digits)", "10000000000000000\r\nxx\r\n0\r\n\r\n"),
        ("chunk size with 0x", "0x2\r\nxx\r\n0\r\n\r\n"),
        ("negative chunk size", "-2\r\nxx\r\n0\r\n\r\n"),
        ("chunk size with a leading space", " 2\r\nxx\r\n0\r\n\r\n"),
        ("chunk size with a trailing space", "2 \r\nxx\r\n0\r\n\r\n"),
        ("chunk size with a trailing tab", "2\t\r\nxx\r\n0\r\n\r\n"),
        ("whitespace before the extension", "2 ;a=b\r\nxx\r\n0\r\n\r\n"),
        ("an extension without a name", "2;\r\nxx\r\n0\r\n\r\n"),
        ("an extension with a NUL byte", "2;a\x00b\r\nxx\r\n0\r\n\r\n"),
        ("an extension with a quoted LF", "2;a=\"x\ny\"\r\nxx\r\n0\r\n\r\n"),
        ("an unterminated quoted extension", "2;a=\"xx\r\nxx\r\n0\r\n\r\n"),
        ("a 5000-byte extension", "2;a=" + "b" * 5000 + "\r\nxx\r\n0\r\n\r\n"),
        ("upper-case hex size", "A\r\n0123456789\r\n0\r\n\r\n"),
        ("a 16-digit zero-padded size", "0000000000000002\r\nxx\r\n0\r\n\r\n"),
        ("a last chunk written 00", "2\r\nxx\r\n00\r\n\r\n"),
        ("a last chunk with an extension", "2\r\nxx\r\n0;end=1\r\n\r\n"),
        ("no last chunk (the connection closes)", "2\r\nxx\r\n"),
        ("a size in non-hex letters", "g\r\nxx\r\n0\r\n\r\n"),
        ("an underscore in the size", "1_0\r\n0123456789abcdef\r\n0\r\n\r\n"),
        ("a size and data in one piece with the next request", "5\r\nhello\r\n0\r\n\r\n" + nxt),
        ("chunk data with CRLF inside", "4\r\n\r\n\r\n\r\n0\r\n\r\n"),
        ("many one-byte chunks", "".join("1\r\nx\r\n" for _ in range(200)) + "0\r\n\r\n"),
        ("a chunk over the body limit (2 MiB declared)", "200000\r\nxx"),
        ("a bare CR after the last chunk", "0\r\n\r\r\n"),
    ]
    for desc, body in chunk_cases:
        add("chunked", desc, req(te, body))

    # --- whitespace and line ends ---
    add("whitespace", "LF-only line ends", req([], method="GET", eol="\n") + nxt)
    add("whitespace", "CR-only line ends", req([], method="GET", eol="\r") + nxt)
    add("whitespace", "a bare LF ends one header line", "GET /t/p/c{n}/x HTTP/1.1\r\nhost: a\nx-a: 1\r\n\r\n" + nxt)
    add("whitespace", "the empty line is a bare LF", "GET /t/p/c{n}/x HTTP/1.1\r\nhost: a\r\n\n" + nxt)
    add("whitespace", "a space before the colon", req(["x-a : 1"], method="GET") + nxt)
    add("whitespace", "a space before the colon of content-length", req(["content-length : 5"], "hello") + nxt)
    add("whitespace", "a tab in a value", req(["x-a: a\tb"], method="GET") + nxt)
    add("whitespace", "a CR inside a value", req(["x-a: a\rb"], method="GET") + nxt)
    add("whitespace", "a NUL inside a value", req(["x-a: a\x00b"], method="GET") + nxt)
    add("whitespace", "a DEL inside a value", req(["x-a: a\x7fb"], method="GET") + nxt)
    add("whitespace", "a line of whitespace before the headers", "GET /t/p/c{n}/x HTTP/1.1\r\n \r\nhost: a\r\n\r\n")
    add("whitespace", "two spaces in the request line", "GET  /t/p/c{n}/x HTTP/1.1\r\nhost: a\r\n\r\n")
    add("whitespace", "a tab in the request line", "GET\t/t/p/c{n}/x HTTP/1.1\r\nhost: a\r\n\r\n")
    add("whitespace", "a trailing space in the request line", "GET /t/p/c{n}/x HTTP/1.1 \r\nhost: a\r\n\r\n")
    add("whitespace", "a leading space in the request line", " GET /t/p/c{n}/x HTTP/1.1\r\nhost: a\r\n\r\n")
    add("whitespace", "an empty line before the request", "\r\nGET /t/p/c{n}/x HTTP/1.1\r\nhost: a\r\n\r\n")
    add("whitespace", "obs-fold in an ordinary header", req(["x-a: 1", " 2"], method="GET") + nxt)
    add("whitespace", "a header without a space after the colon", req(["x-a:1"], method="GET") + nxt)
    add("whitespace", "trailing whitespace in a value", req(["x-a: 1  \t"], method="GET") + nxt)
    add("whitespace", "a form feed in the request line", "GET /t/p/c{n}/x\x0cHTTP/1.1\r\nhost: a\r\n\r\n")

    # --- methods and versions ---
    for m in ["get", "GeT", "G@T", "G ET", "", "X" * 300, "PURGE", "TRACE", "CONNECT", "BREW", "PROPFIND"]:
        add("method", f"method {m[:20]!r}", f"{m} /t/p/c{{n}}/x HTTP/1.1\r\nhost: a\r\n\r\n")
    for v in ["HTTP/1.2", "HTTP/2.0", "HTTP/0.9", "http/1.1", "HTTP/1.1x", "HTTP/11", "HTTP/1", "HTTPS/1.1"]:
        add("version", f"version {v!r}", f"GET /t/p/c{{n}}/x {v}\r\nhost: a\r\n\r\n")
    add("version", "an HTTP/0.9 request line", "GET /t/p/c{n}/x\r\n\r\n")

    # --- targets ---
    targets = [
        ("absolute-form http", "http://a/t/p/c{n}/x"),
        ("absolute-form https", "https://a/t/p/c{n}/x"),
        ("absolute-form ftp", "ftp://a/t/p/c{n}/x"),
        ("absolute-form with userinfo", "http://user@a/t/p/c{n}/x"),
        ("absolute-form without a path", "http://a"),
        ("authority-form", "a:80"),
        ("asterisk-form on GET", "*"),
        ("a double slash", "/t/p//c{n}/x"),
        ("dot segments inside the stage", "/t/p/c{n}/a/../x"),
        ("dot segments above the stage", "/t/p/../q/c{n}/x"),
        ("encoded dot segments above the stage", "/t/p/%2e%2e/q/c{n}/x"),
        ("mixed encoded dot segments", "/t/p/c{n}/a/.%2E/x"),
        ("an encoded slash", "/t/p/c{n}/a%2Fb"),
        ("an encoded NUL", "/t/p/c{n}/a%00b"),
        ("a raw NUL", "/t/p/c{n}/a\x00b"),
        ("a fragment", "/t/p/c{n}/x#frag"),
        ("a backslash", "/t/p/c{n}\\x"),
        ("non-ASCII bytes", "/t/p/c{n}/\xe9"),
        ("a space in the query", "/t/p/c{n}/x?a b"),
        ("a very long target (9 KiB)", "/t/p/c{n}/" + "a" * 9000),
        ("a target without a leading slash", "t/p/c{n}/x"),
        ("a query with an encoded CRLF", "/t/p/c{n}/x?a=%0d%0aX-Injected:%201"),
        ("a double-encoded dot segment", "/t/p/%252e%252e/c{n}/x"),
        ("a semicolon path parameter", "/t/p/c{n}/x;jsessionid=1"),
    ]
    for desc, t in targets:
        add("target", desc, f"GET {t} HTTP/1.1\r\nhost: a\r\n\r\n")

    # --- header names ---
    for name in ["x a", "x@a", "x(a)", "x\x01a", "x\xe9a", "", "x:a", "x\ta", "[x]", "x\"a", "x{a}", "x/a"]:
        add("header name", f"header name {name!r}", f"GET /t/p/c{{n}}/x HTTP/1.1\r\nhost: a\r\n{name}: v\r\n\r\n" + nxt)
    add("header name", "a line without a colon", "GET /t/p/c{n}/x HTTP/1.1\r\nhost: a\r\nnocolon\r\n\r\n" + nxt)
    add("header name", "a colon only", "GET /t/p/c{n}/x HTTP/1.1\r\nhost: a\r\n:\r\n\r\n" + nxt)

    # --- Host ---
    add("host", "no Host in HTTP/1.1", "GET /t/p/c{n}/x HTTP/1.1\r\n\r\n")
    add("host", "no Host in HTTP/1.0", "GET /t/p/c{n}/x HTTP/1.0\r\n\r\n")
    for h in ["a, b", "a/b", "user@a", "a b", "", "a:80:80", "a:x", "[::1]:8080", "a..b", "-a", "a\x00"]:
        add("host", f"Host {h!r}", f"GET /t/p/c{{n}}/x HTTP/1.1\r\nhost: {h}\r\n\r\n")
    add("host", "two Host fields", "GET /t/p/c{n}/x HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n")
    add("host", "absolute-form and a different Host", "GET http://b/t/p/c{n}/x HTTP/1.1\r\nhost: a\r\n\r\n")

    # --- sizes ---
    add("size", "a 7 KiB header", req(["x-big: " + "a" * 7000], method="GET") + nxt)
    add("size", "a 9 KiB header", req(["x-big: " + "a" * 9000], method="GET") + nxt)
    add("size", "a 70 KiB head", req([f"x-{i}: " + "a" * 700 for i in range(100)], method="GET"))
    add("size", "100 headers", req([f"x-{i}: v" for i in range(99)], method="GET") + nxt)
    add("size", "101 headers", req([f"x-{i}: v" for i in range(100)], method="GET") + nxt)
    add("size", "300 headers", req([f"x-{i}: v" for i in range(300)], method="GET"))
    add("size", "a 2 MiB content-length body", req(["content-length: 2097152"], "x" * 2097152))
    add("size", "a 70 KiB request line", f"GET /t/p/c{{n}}/{'a' * 70000} HTTP/1.1\r\nhost: a\r\n\r\n")

    # --- connection and expect ---
    add("connection", "connection: close then a pipelined request", req(["connection: close"], method="GET") + nxt)
    add("connection", "connection naming content-length", req(["connection: content-length", "content-length: 5"], "hello") + nxt)
    add("connection", "connection naming transfer-encoding", req(["connection: transfer-encoding", "transfer-encoding: chunked"], "5\r\nhello\r\n0\r\n\r\n") + nxt)
    add("connection", "connection naming host", req(["connection: host"], method="GET") + nxt)
    add("connection", "expect 100-continue with a body sent at once", req(["expect: 100-continue", "content-length: 5"], "hello") + nxt)
    add("connection", "an unknown expectation", req(["expect: 200-ok", "content-length: 5"], "hello") + nxt)
    add("connection", "upgrade: h2c", req(["connection: upgrade, http2-settings", "upgrade: h2c", "http2-settings: AAMAAABkAAQAAP__"], method="GET") + nxt)
    return C


# === the recording backend ===

class Backend:
    """A lenient HTTP/1.1 server that records every request it parses, and answers each with 200."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.records = []  # (method, target, body, complete)
        threading.Thread(target=self.accept, daemon=True).start()

    def take(self):
        with self.lock:
            r, self.records = self.records, []
        return r

    def accept(self):
        while True:
            conn, _ = self.sock.accept()
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn):
        buf = b""
        conn.settimeout(30)
        try:
            while True:
                parsed = self.parse(buf)
                if parsed is None:
                    data = conn.recv(65536)
                    if not data:
                        if buf.strip():
                            with self.lock:
                                self.records.append(("(partial)", buf[:60].decode("latin-1"), b"", False))
                        return
                    buf += data
                    continue
                if parsed == "bad":
                    with self.lock:
                        self.records.append(("(garbage)", buf[:60].decode("latin-1"), b"", False))
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    return
                method, target, body, used = parsed
                with self.lock:
                    self.records.append((method, target, body, True))
                buf = buf[used:]
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        except OSError:
            return
        finally:
            conn.close()

    @staticmethod
    def parse(buf):
        """(method, target, body, bytes used), None for more, or "bad"."""
        m = re.search(rb"\r?\n\r?\n", buf)
        if not m:
            return "bad" if len(buf) > 200000 else None
        head = buf[: m.start()].decode("latin-1")
        lines = re.split(r"\r?\n", head)
        parts = lines[0].split(" ")
        if len(parts) < 2:
            return "bad"
        method, target = parts[0], parts[1]
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers.setdefault(k.strip().lower(), []).append(v.strip())
        pos = m.end()
        if any("chunked" in v.lower() for v in headers.get("transfer-encoding", [])):
            body = b""
            while True:
                lm = re.compile(rb"([0-9a-fA-F]+)[^\n]*\n").match(buf, pos)
                if not lm:
                    return None if len(buf) - pos < 8192 else "bad"
                size = int(lm.group(1), 16)
                pos = lm.end()
                if size == 0:
                    # Trailer lines, up to an empty one.
                    while True:
                        nl = buf.find(b"\n", pos)
                        if nl < 0:
                            return None
                        line = buf[pos:nl].rstrip(b"\r")
                        pos = nl + 1
                        if not line:
                            return method, target, body, pos
                if len(buf) < pos + size + 1:
                    return None
                body += buf[pos:pos + size]
                pos += size
                if buf[pos:pos + 2] == b"\r\n":
                    pos += 2
                elif buf[pos:pos + 1] == b"\n":
                    pos += 1
        n = 0
        for v in headers.get("content-length", []):
            try:
                n = int(v.split(",")[0])
            except ValueError:
                return "bad"
        if len(buf) < pos + n:
            return None
        return method, target, buf[pos:pos + n], pos + n


# === the proxies ===

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, what):
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{what} did not start on port {port}")


def start_proxies(args, work):
    procs, ports, backends = [], {}, {}
    for k in ("nginx", "haproxy", "canarygate"):
        backends[k] = Backend()
        ports[k] = free_port()
    ng = f"""worker_processes 1; daemon off; pid {work}/nginx.pid; error_log {work}/nginx.error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; client_max_body_size 10m;
  upstream b {{ server 127.0.0.1:{backends['nginx'].port}; keepalive 16; }}
  server {{ listen 127.0.0.1:{ports['nginx']};
    location /t/p/ {{ proxy_pass http://b/; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
"""
    open(f"{work}/nginx.conf", "w").write(ng)
    procs.append(subprocess.Popen(["nginx", "-c", f"{work}/nginx.conf", "-p", work], stderr=subprocess.DEVNULL))
    hp = f"""global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 5s
  timeout server 5s
  http-reuse always
frontend fe
  bind 127.0.0.1:{ports['haproxy']}
  http-request replace-path ^/t/p(/.*) \\1
  default_backend b
backend b
  server s1 127.0.0.1:{backends['haproxy'].port}
"""
    open(f"{work}/haproxy.cfg", "w").write(hp)
    procs.append(subprocess.Popen(["haproxy", "-db", "-f", f"{work}/haproxy.cfg"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    cg = f"""server:
  listen: 127.0.0.1:{ports['canarygate']}
  adminListen: 127.0.0.1:{free_port()}
  dataDir: {work}/canarygate-data
  workers: 1
  accessLog: {{enabled: false}}
apis:
  - name: t
    routes:
      - path: /{{proxy+}}
        integration: {{type: http, uri: "http://127.0.0.1:{backends['canarygate'].port}/{{proxy}}"}}
    stages:
      - name: p
"""
    open(f"{work}/canarygate.yaml", "w").write(cg)
    procs.append(subprocess.Popen([args.bin, "serve", "--config", f"{work}/canarygate.yaml"], stdout=subprocess.DEVNULL,
                                  stderr=open(f"{work}/canarygate.log", "w")))
    for k in ports:
        wait_port(ports[k], k)
    configs = {"nginx": ng, "haproxy": hp, "canarygate": cg}
    return procs, ports, backends, configs


def exchange(port, raw):
    """Sends `raw`; the statuses of the responses read until the proxy closes or goes quiet."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(1.0)
    got = b""
    try:
        s.sendall(raw)
    except OSError:
        pass
    deadline = time.time() + 3
    try:
        while time.time() < deadline:
            data = s.recv(65536)
            if not data:
                break
            got += data
    except OSError:
        pass
    s.close()
    return statuses(got)


def statuses(got):
    """The status of each response in a stream of them (bodies by content-length or chunked)."""
    out, pos = [], 0
    while True:
        m = re.compile(rb"HTTP/1\.[01] (\d{3})[^\n]*\n").match(got, pos)
        if not m:
            return out
        out.append(int(m.group(1)))
        end = got.find(b"\r\n\r\n", pos)
        if end < 0:
            return out
        head = got[pos:end].lower()
        pos = end + 4
        status = int(m.group(1))
        if 100 <= status < 200 or status in (204, 304):
            continue
        cl = re.search(rb"\ncontent-length: *(\d+)", head)
        if cl:
            pos += int(cl.group(1))
        elif b"transfer-encoding: chunked" in head:
            last = got.find(b"\r\n0\r\n\r\n", pos - 2)
            if last < 0:
                return out
            pos = last + 7
        else:
            return out


# === comparing ===

def norm_target(t, n):
    """The target as a backend would act on it: decoded, slashes merged, dot segments resolved, the
    case's token removed."""
    path, _, query = t.partition("?")
    p = urllib.parse.unquote(path, encoding="latin-1")
    p = re.sub(r"/+", "/", p)
    trailing = p.endswith("/")
    p = posixpath.normpath(p) if p.startswith("/") else p
    if trailing and not p.endswith("/"):
        p += "/"
    p = p.replace(f"/c{n}/", "/C/").replace(f"/c{n}", "/C")
    return p + ("?" + query if query else "")


def printable(s):
    """Control and non-ASCII characters as escapes, so the report stays text."""
    return "".join(c if " " <= c < "\x7f" else repr(c)[1:-1] for c in s)


def summarize(records, n):
    out = []
    for method, target, body, complete in records:
        method = printable(method[:40])
        if not complete:
            out.append(f"{method} {printable(target[:30])}")
            continue
        digest = hashlib.sha1(body).hexdigest()[:8] if body else "-"
        out.append(f"{method} {printable(norm_target(target, n))} body {len(body)}/{digest}")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="canarygate-differential-")
    procs, ports, backends, configs = start_proxies(args, work)
    rows, flags = [], []
    try:
        all_cases = cases()
        for i, (cat, desc, raw) in enumerate(all_cases):
            n = i + 1
            data = raw.replace("{n}", str(n)).encode("latin-1")
            results = {}
            threads = []

            def run(k):
                results[k] = exchange(ports[k], data)

            for k in ports:
                th = threading.Thread(target=run, args=(k,))
                th.start()
                threads.append(th)
            for th in threads:
                th.join()
            time.sleep(0.2)
            fwd = {k: summarize(backends[k].take(), n) for k in ports}
            flag = ""
            cg, ng, hp = fwd["canarygate"], fwd["nginx"], fwd["haproxy"]
            complete = lambda xs: [x for x in xs if not x.startswith("(")]
            if complete(cg) and not complete(ng) and not complete(hp):
                flag = "forwards what both others refuse"
            elif complete(ng) == complete(hp) and complete(cg) and complete(cg) != complete(ng):
                flag = "forwards something else than both others"
            elif any("smuggled" in x.lower() for x in cg):
                flag = "a smuggled request reached the backend"
            if flag:
                flags.append((n, desc, flag))
            rows.append((n, cat, desc, results, fwd, flag))
            print(f"{n:3} {cat:12} {desc[:50]:50} cg={results['canarygate']} ng={results['nginx']} hp={results['haproxy']} {flag}", flush=True)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    write_report(args.out, rows, flags, configs)
    print(f"\n{len(rows)} cases, {len(flags)} flagged; report: {args.out}")
    sys.exit(1 if flags else 0)


def version(cmd, pattern):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True).stdout + subprocess.run(cmd, capture_output=True, text=True).stderr
        m = re.search(pattern, out)
        return m.group(0) if m else out.strip().splitlines()[0]
    except OSError:
        return "?"


def write_report(path, rows, flags, configs):
    def cell(xs):
        return "<br>".join(x.replace("|", "\\|") for x in xs) if xs else "—"

    L = ["# Differential check: canarygate, nginx and HAProxy on the same malformed requests", ""]
    L.append("Produced by `bash bench/differential` (bench/differential.py); do not edit by hand.")
    L.append("")
    L.append(f"{len(rows)} requests — TE/CL combinations, chunk-size tricks, whitespace and line ends, methods, versions, "
             "targets, header names with invalid bytes, Host forms, huge and many headers — were sent raw to each proxy, "
             "each in front of its own recording backend (lenient: it takes bare LF line ends and `chunked` anywhere "
             "in Transfer-Encoding, as many real backends do). Most cases pipeline a second request, and the smuggling "
             "shapes hide a `GET .../smuggled` in their body. For each proxy the table gives the statuses it answered and "
             "the requests its backend parsed: method, target (decoded, slashes merged, dot segments resolved, the "
             "case's token shown as `C`), and body length/digest; `(partial)` is a request the backend got only part "
             "of before the proxy closed, `(garbage)` bytes it could not parse.")
    L.append("")
    L.append("A case is **flagged** when canarygate forwards a request that both nginx and HAProxy refuse, forwards "
             "something other than what both forward when they agree, or lets a smuggled request reach its backend.")
    L.append("")
    L.append(f"Versions: {version(['nginx', '-v'], r'nginx/[0-9.]+')}, {version(['haproxy', '-v'], r'HAProxy version [0-9.]+')}, "
             "canarygate at this commit.")
    L.append("")
    L.append(f"**Flagged: {len(flags)}.**")
    for n, desc, why in flags:
        L.append(f"- case {n} ({desc}): {why}")
    L.append("")
    L.append("| # | kind | case | canarygate | nginx | HAProxy | canarygate forwarded | nginx forwarded | HAProxy forwarded |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for n, cat, desc, results, fwd, flag in rows:
        st = {k: ", ".join(map(str, v)) or "closed" for k, v in results.items()}
        d = printable(desc).replace("|", "\\|")
        if flag:
            d = f"**{d}** ({flag})"
        L.append(f"| {n} | {cat} | {d} | {st['canarygate']} | {st['nginx']} | {st['haproxy']} | "
                 f"{cell(fwd['canarygate'])} | {cell(fwd['nginx'])} | {cell(fwd['haproxy'])} |")
    L.append("")
    L.append("## Configurations")
    for k, v in configs.items():
        L.append(f"\n{k}:\n\n```text\n{v.strip()}\n```")
    with open(path, "w") as f:
        f.write("\n".join(L) + "\n")


if __name__ == "__main__":
    main()
