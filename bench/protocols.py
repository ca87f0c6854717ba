"""The protocols group of the benchmark (`bash bench/run --only protocols`): canarygate, nginx and HAProxy
doing the same 90/10 split over TLS and HTTP/2, to the same backend (nginx `return 200`, HTTP/1.1):

  tls-new        a new TLS connection per request (TLS 1.3, P-256 certificate; every proxy offers
                 session resumption, as each does by default, and the client may use it): oha
                 --disable-keepalive, 32 at a time; connections (= requests) per second and the proxy's
                 CPU µs per connection
  tls-keepalive  HTTP/1.1 over TLS on 32 keep-alive connections (wrk); requests/s and CPU µs per request
  h2c            HTTP/2 in cleartext with prior knowledge (oha --http2): 4 connections x 8 streams each
  h2-tls         HTTP/2 over TLS (ALPN h2), the same load

Each proxy runs one worker (thread or process), as in the other groups; rows are interleaved per
repetition. Imported by harness.py; results go into a marked section of docs/BENCHMARKS.md (kept by
full runs of the other groups).
"""

import os
import statistics
import subprocess

from verdict import verdict

BEGIN, END = "<!-- protocols:begin -->", "<!-- protocols:end -->"

ROWS = [
    ("tls-new", "TLS, a new connection per request"),
    ("tls-keepalive", "HTTP/1.1 over TLS, keep-alive"),
    ("h2c", "HTTP/2 cleartext (prior knowledge)"),
    ("h2-tls", "HTTP/2 over TLS (ALPN h2)"),
]


def certificate(w):
    """A self-signed P-256 certificate for localhost (and its PEM bundle for HAProxy)."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", f"{w}/tls.key", "-out", f"{w}/tls.crt", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-days", "2"],
                   check=True, capture_output=True)
    with open(f"{w}/tls.pem", "w") as f:
        f.write(open(f"{w}/tls.crt").read() + open(f"{w}/tls.key").read())


def nginx_conf(w, tls_port, h2c_port, prod, canary):
    return f"""worker_processes 1; daemon off; pid {w}/p-nginx.pid; error_log {w}/p-nginx.error.log;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 1000000; ssl_session_cache shared:SSL:10m;
  split_clients "${{request_id}}" $variant {{ 10% canary; * production; }}
  upstream production {{ server 127.0.0.1:{prod}; keepalive 64; }}
  upstream canary {{ server 127.0.0.1:{canary}; keepalive 64; }}
  server {{ listen 127.0.0.1:{tls_port} ssl http2 backlog=4096; ssl_certificate {w}/tls.crt; ssl_certificate_key {w}/tls.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{ proxy_pass http://$variant; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}
  server {{ listen 127.0.0.1:{h2c_port} http2 backlog=4096;
    location / {{ proxy_pass http://$variant; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
"""


def haproxy_conf(w, tls_port, h2c_port, prod, canary):
    return f"""global
  nbthread 1
  maxconn 8000

defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always

frontend tls
  bind 127.0.0.1:{tls_port} ssl crt {w}/tls.pem alpn h2,http/1.1
  default_backend split

frontend h2c
  bind 127.0.0.1:{h2c_port} proto h2
  default_backend split

backend split
  balance random
  server production 127.0.0.1:{prod} weight 90
  server canary 127.0.0.1:{canary} weight 10
"""


def canarygate_conf(w, port, tls_port, admin, prod, canary, data="p-canarygate-data"):
    return f"""server:
  listen: 127.0.0.1:{port}
  tlsListen: 127.0.0.1:{tls_port}
  tls: {{certFile: {w}/tls.crt, keyFile: {w}/tls.key}}
  adminListen: 127.0.0.1:{admin}
  dataDir: {w}/{data}
  workers: 1
  accessLog: {{enabled: false}}
apis:
  - name: bench
    routes:
      - path: /{{proxy+}}
        integration: {{type: http, uri: "http://${{stageVariables.backend}}/{{proxy}}"}}
    stages:
      - name: prod
        variables: {{backend: "127.0.0.1:{prod}"}}
        canarySettings: {{percentTraffic: 10, stageVariableOverrides: {{backend: "127.0.0.1:{canary}"}}}}
"""


def wait_port(url, what, timeout=20):
    import socket
    import time
    host, port = url.split("//")[1].split("/")[0].split(":")
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} is not listening at {url}")


def load(h, row, url, seconds):
    """One measured run of `row` against `url`: (requests, requests/s, errors)."""
    if row == "tls-keepalive":
        return h.run_wrk(url, seconds, 32)
    extra = {"tls-new": ["--disable-keepalive", "-c", "32"],
             "h2c": ["--http2", "-c", "4", "-p", "8"],
             "h2-tls": ["--http2", "-c", "4", "-p", "8"]}[row]
    d, errors = h.run_oha(url, ["-z", f"{seconds}s", "--insecure"] + extra)
    s = d["summary"]
    total = sum(d.get("statusCodeDistribution", {}).values())
    return total, s["requestsPerSec"], errors


def run(h, args, work, ab=False):
    """Starts the servers, measures every row on every proxy (interleaved), returns the results. With
    `ab`, the proxies are this build and the baseline build `args.ab` (an A/B of the rows, no report)."""
    certificate(work)
    services = []

    def start(name, argv, env=None):
        s = h.Service(name, argv, work, env=env)
        services.append(s)
        return s

    try:
        prod, canary = h.free_port(), h.free_port()
        conf = h.write(f"{work}/p-backend.conf", h.backend_conf(work, prod, canary).replace("backend.pid", "p-backend.pid")
                       .replace("backend.error.log", "p-backend.error.log"))
        start("p-backend", ["nginx", "-c", conf, "-p", work])
        urls = {}
        procs = {}

        def start_canarygate(key, binary):
            port, tls, admin = h.free_port(), h.free_port(), h.free_port()
            conf = h.write(f"{work}/p-{key}.yaml", canarygate_conf(work, port, tls, admin, prod, canary, f"p-{key}-data"))
            env = dict(os.environ, CANARYGATE_WORKER_THREADS="1", CANARYGATE_LOG="warn")
            env.pop("CANARYGATE_GATEWAY_WORKERS", None)
            procs[key] = start(f"p-{key}", [binary, "serve", "--config", conf], env=env)
            urls[key] = (f"https://127.0.0.1:{tls}/bench/prod/x", f"http://127.0.0.1:{port}/bench/prod/x")
            h.wait_http(urls[key][1], key)

        if ab:
            start_canarygate("canarygate", args.bin)
            start_canarygate("canarygate-base", args.ab)
            return measure(h, args, ["canarygate", "canarygate-base"], procs, urls, count_syscalls=False)
        tls, h2c = h.free_port(), h.free_port()
        conf = h.write(f"{work}/p-nginx.conf", nginx_conf(work, tls, h2c, prod, canary))
        procs["nginx"] = start("p-nginx", ["nginx", "-c", conf, "-p", work])
        urls["nginx"] = (f"https://127.0.0.1:{tls}/x", f"http://127.0.0.1:{h2c}/x")
        tls, h2c = h.free_port(), h.free_port()
        conf = h.write(f"{work}/p-haproxy.cfg", haproxy_conf(work, tls, h2c, prod, canary))
        procs["haproxy"] = start("p-haproxy", ["haproxy", "-db", "-f", conf])
        urls["haproxy"] = (f"https://127.0.0.1:{tls}/x", f"http://127.0.0.1:{h2c}/x")
        start_canarygate("canarygate", args.bin)
        for k in ("nginx", "haproxy"):
            wait_port(urls[k][1], k)
        res = measure(h, args, ["nginx", "haproxy", "canarygate"], procs, urls, count_syscalls=True)
        res["configs"] = {
            "nginx": open(f"{work}/p-nginx.conf").read(),
            "haproxy": open(f"{work}/p-haproxy.cfg").read(),
            "canarygate": open(f"{work}/p-canarygate.yaml").read(),
        }
        return res
    finally:
        for s in reversed(services):
            s.stop()


def measure(h, args, keys, procs, urls, count_syscalls):
    """Every row on every target in `keys`, the targets' order rotating per repetition."""
    reps = args.reps if not args.quick else 1
    results = {row: {k: [] for k in keys} for row, _ in ROWS}
    syscalls = {}
    for row, label in ROWS:
        url_of = {k: (urls[k][0] if row in ("tls-new", "tls-keepalive", "h2-tls") else urls[k][1]) for k in keys}
        for k in keys:  # warm-up
            load(h, row, url_of[k], args.warmup)
        for rep in range(reps):
            for k in keys[rep % len(keys):] + keys[: rep % len(keys)]:
                (u0, s0) = procs[k].cpu_split()
                reqs, rps, errors = load(h, row, url_of[k], args.duration)
                (u1, s1) = procs[k].cpu_split()
                if errors:
                    raise h.BenchError(f"{k} {label}: {errors} errors in a measured run")
                n = max(reqs, 1)
                r = {"rps": rps, "cpu_us": (u1 - u0 + s1 - s0) * 1e6 / n, "user_us": (u1 - u0) * 1e6 / n,
                     "system_us": (s1 - s0) * 1e6 / n, "requests": reqs, "rep": rep}
                results[row][k].append(r)
                print(f"  {label:<36} rep {rep + 1}/{reps} {k:<15} {rps:>9.0f} req/s {r['cpu_us']:>7.1f} µs/request", flush=True)
        for k in keys if count_syscalls else []:
            n = h.syscalls_per_request(procs[k], lambda k=k: load(h, row, url_of[k], min(args.duration, 3))[0])
            syscalls.setdefault(row, {})[k] = n
            if n is not None:
                print(f"  {label:<36} {k:<11} {n:.2f} system calls/request (strace -c)", flush=True)
    return {"rows": results, "syscalls": syscalls}


def ab_summary(res):
    """Lines comparing this build with the baseline per row: per-round ratios of CPU per request and of
    requests/s (this / baseline), their medians."""
    med = statistics.median
    out = []
    for row, label in ROWS:
        a, b = res["rows"][row]["canarygate"], res["rows"][row]["canarygate-base"]
        cpu = [x["cpu_us"] / y["cpu_us"] for x, y in zip(a, b)]
        rps = [x["rps"] / y["rps"] for x, y in zip(a, b)]
        out.append(f"{label}: this build {med([x['rps'] for x in a]):,.0f} req/s, {med([x['cpu_us'] for x in a]):.1f} µs; "
                   f"baseline {med([x['rps'] for x in b]):,.0f} req/s, {med([x['cpu_us'] for x in b]):.1f} µs; "
                   f"CPU ratio median {med(cpu):.3f} ({', '.join(f'{r:.3f}' for r in cpu)}); "
                   f"requests/s ratio median {med(rps):.3f} ({', '.join(f'{r:.3f}' for r in rps)})")
    return out


# The request path's second round: (row, the proxy compared with, its name, the most canarygate's CPU
# per request may be as a multiple of that proxy's).
TARGETS = [
    ("tls-keepalive", "nginx", "nginx", 0.85),
    ("h2c", "haproxy", "HAProxy", 1.1),
    ("h2-tls", "haproxy", "HAProxy", 1.1),
]


def section(res, cmdline, env=None):
    med = statistics.median
    out = [BEGIN, "## TLS and HTTP/2 (90/10 split)", "",
           f"`{cmdline}` — the same split as above, one worker each, to an nginx backend over HTTP/1.1; "
           "self-signed P-256 certificate, TLS 1.3 (what oha negotiates); every proxy offers session resumption (its default: nginx with a shared session cache and tickets, HAProxy's cache and tickets, canarygate's rustls session cache), and oha may resume. "
           "*New TLS connection per request*: oha `--disable-keepalive`, 32 at a time (requests/s = handshakes/s). "
           "*HTTP/1.1 over TLS*: wrk, 32 keep-alive connections. *HTTP/2*: oha `--http2`, 4 connections x 8 "
           "concurrent streams, cleartext with prior knowledge and over TLS (ALPN h2). Median (range) of the "
           "interleaved repetitions; CPU is the proxy's user+system time per request; system calls per request "
           "counted by `strace -c -f` on the proxy's processes in one more run of 3 s (not timed); user + system: the "
           "medians of each part of the CPU time." + (
               f" Measured {env['time']} at `{env['rev']}` on {env['machine']}." if env else ""), "",
           "| | nginx | HAProxy | canarygate | canarygate / nginx CPU | canarygate / HAProxy CPU | system calls/request (nginx, HAProxy, canarygate) | user + system µs (nginx, HAProxy, canarygate) |",
           "|---|---|---|---|---|---|---|---|"]
    rows = res["rows"]
    for row, label in ROWS:
        cells = []
        for k in ["nginx", "haproxy", "canarygate"]:
            runs = rows[row][k]
            rps = [r["rps"] for r in runs]
            cpu = [r["cpu_us"] for r in runs]
            cells.append(f"{med(rps):,.0f} req/s, {med(cpu):.1f} µs ({min(cpu):.1f}–{max(cpu):.1f})")
        ours = med([r["cpu_us"] for r in rows[row]["canarygate"]])
        ratio = ours / med([r["cpu_us"] for r in rows[row]["nginx"]])
        ratio_h = ours / med([r["cpu_us"] for r in rows[row]["haproxy"]])
        counted = res.get("syscalls", {}).get(row, {})
        calls = ", ".join(f"{counted[k]:.2f}" if counted.get(k) is not None else "—" for k in ["nginx", "haproxy", "canarygate"])
        split = ", ".join(f"{med([r['user_us'] for r in rows[row][k]]):.1f} + {med([r['system_us'] for r in rows[row][k]]):.1f}"
                          if all("user_us" in r for r in rows[row][k]) else "—" for k in ["nginx", "haproxy", "canarygate"])
        out.append(f"| {label} | " + " | ".join(cells) + f" | {ratio:.2f} | {ratio_h:.2f} | {calls} | {split} |")
    out += ["", "| target | measured (median of the rounds' ratios) | verdict |", "|---|---|---|"]
    for row, other, name, target in TARGETS:
        x = med([a["cpu_us"] / b["cpu_us"] for a, b in zip(rows[row]["canarygate"], rows[row][other])])
        label = dict(ROWS)[row]
        out.append(f"| {label}: CPU per request ≤ {target}× {name}'s | {x:.2f}× | {verdict(x, target, True)} |")
    out += ["", "<details><summary>Configurations of this group</summary>", ""]
    for k, text in res["configs"].items():
        out += [f"{k}:", "", "```text", text.rstrip(), "```", ""]
    out += ["</details>", END]
    return "\n".join(out) + "\n"
