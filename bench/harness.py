#!/usr/bin/env python3
"""canarygate's benchmark harness (run it through `bash bench/run`, which installs the tools).

Starts, on free loopback ports: a tiny fast backend (nginx `return 200`, one worker) on a production and a
canary port; nginx (`split_clients`), HAProxy (weighted servers) and canarygate each doing the same 90/10
split with one worker and keep-alive on both sides, once with access logs off and once with them on; and
measures, interleaved, with the direct backend as a reference:

  split     saturated requests/s (wrk) and proxy CPU µs per request (/proc utime+stime of the proxy's
            processes over the run), logs off
  logs      the same with access logs on
  latency   p50/p99/p99.9 at fixed rates of 25/50/75% of nginx's saturated rate (oha, open loop, with
            latency correction)
  memory    resident memory after 1,000,000 requests over 1,000 connections (oha)
  cache     a cached hit: canarygate's stage cache vs nginx proxy_cache vs HAProxy's cache
  reaction  the rollback reaction time (bench/src/bin/reaction-time.rs)
  scale     start time, memory, PATCH latency and CPU per request at 1 to 10,000 APIs, with nginx's
            memory for the same routes as the anchor (bench/scale.py; its own marked section of the report)

Before measuring a target it checks the split (about 10% canary over 1,000 requests) and that there are no
errors; any error in a measured run fails the harness. `--quick` runs every group for a few seconds per
target and asserts only that (never a speed). A full run of every group rewrites docs/BENCHMARKS.md and
docs/benchmarks.png; other runs write the report to a temporary folder.
"""

import argparse
import importlib
import datetime
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from verdict import verdict

GROUPS = ["split", "logs", "latency", "memory", "cache", "reaction", "scale", "protocols", "cluster"]
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    pass


# ---------------------------------------------------------------- processes


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children_of(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                kids.append(int(entry))
        except (OSError, IndexError, ValueError):
            pass
    return kids


class Service:
    """A server process started by the harness; its CPU and memory include its child processes."""

    def __init__(self, name, argv, workdir, env=None, stdout=None):
        self.name = name
        out = open(stdout or os.path.join(workdir, f"{name}.out"), "wb")
        self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir)

    def pids(self):
        return [self.proc.pid] + children_of(self.proc.pid)

    def cpu_seconds(self):
        user, system = self.cpu_split()
        return user + system

    def cpu_split(self):
        """User and system CPU seconds of the service's processes so far."""
        user = system = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                user += int(fields[11])  # utime
                system += int(fields[12])  # stime
            except OSError:
                pass
        return user / CLK_TCK, system / CLK_TCK

    def rss_mib(self):
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
            except OSError:
                pass
        return total / 1024

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def wait_http(url, what, timeout=20):
    host, port, path = split_url(url)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection(host, port, timeout=2)
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            c.close()
            if r.status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise BenchError(f"{what} did not answer 200 at {url} within {timeout} s")


def split_url(url):
    m = re.match(r"http://([^:/]+):(\d+)(/.*)", url)
    return m.group(1), int(m.group(2)), m.group(3)


# ---------------------------------------------------------------- configs


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def backend_conf(w, prod, canary):
    return f"""worker_processes 1; daemon off; pid {w}/backend.pid; error_log {w}/backend.error.log;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{prod} backlog=4096;
    location /cached/ {{ add_header cache-control "max-age=300"; return 200 "production cached\\n"; }}
    location / {{ return 200 "production\\n"; }} }}
  server {{ listen 127.0.0.1:{canary} backlog=4096; location / {{ return 200 "canary\\n"; }} }} }}
"""


def nginx_conf(w, name, port, prod, canary, log):
    access = f"access_log {w}/{name}.access.log;" if log else "access_log off;"
    return f"""worker_processes 1; daemon off; pid {w}/{name}.pid; error_log {w}/{name}.error.log;
events {{ worker_connections 8192; }}
http {{ {access} keepalive_requests 1000000;
  split_clients "${{request_id}}" $variant {{ 10% canary; * production; }}
  upstream production {{ server 127.0.0.1:{prod}; keepalive 64; }}
  upstream canary {{ server 127.0.0.1:{canary}; keepalive 64; }}
  proxy_cache_path {w}/{name}-cache levels=1:2 keys_zone={name}:10m max_size=64m inactive=60m use_temp_path=off;
  server {{ listen 127.0.0.1:{port} backlog=4096;
    location /cached/ {{ proxy_pass http://production; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_cache {name}; proxy_cache_valid 200 5m; add_header x-cache $upstream_cache_status; }}
    location / {{ proxy_pass http://$variant; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
"""


def haproxy_conf(port, prod, canary, log):
    logging = "  log stdout format raw local0 info\n" if log else ""
    deflog = "  log global\n  option httplog\n" if log else ""
    return f"""global
  nbthread 1
  maxconn 8000
{logging}
defaults
  mode http
{deflog}  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always

cache stage
  total-max-size 64
  max-age 300

frontend fe
  bind 127.0.0.1:{port}
  use_backend cached if {{ path_beg /cached/ }}
  default_backend split

backend split
  balance random
  server production 127.0.0.1:{prod} weight 90
  server canary 127.0.0.1:{canary} weight 10

backend cached
  http-request cache-use stage
  http-response cache-store stage
  http-response set-header x-cache HIT if {{ res.cache_hit }}
  server production 127.0.0.1:{prod}
"""


def canarygate_conf(w, name, port, admin, prod, canary, log, mirror=None, tracing=None, cohorts=False):
    # With `mirror`, the split stage also mirrors that share of its production requests to the canary.
    mirror_line = f"\n        mirror: {{percentTraffic: {mirror}}}" if mirror is not None else ""
    # With `cohorts`, the split stage has four cohort rules no benchmark request matches (each is
    # evaluated on every request before the weighted draw).
    if cohorts:
        mirror_line += ("\n        canaryRouting: {cohorts: [{header: x-tenant, in: [acme, globex, initech]}, "
                        "{cookie: plan, prefix: beta-}, {query: preview, equals: \"1\"}, {sourceCidr: 10.20.0.0/16}]}")
    # With `tracing` (sink port, sample ratio), spans are exported to the benchmark's OTLP sink.
    tracing_line = (f"\n  telemetry: {{otlpEndpoint: \"http://127.0.0.1:{tracing[0]}\", sampleRatio: {tracing[1]}}}"
                    if tracing is not None else "")
    return f"""server:
  listen: 127.0.0.1:{port}
  adminListen: 127.0.0.1:{admin}
  dataDir: {w}/{name}-data
  workers: 1
  accessLog: {{enabled: {"true" if log else "false"}}}{tracing_line}
apis:
  - name: bench
    routes:
      - path: /{{proxy+}}
        integration: {{type: http, uri: "http://${{stageVariables.backend}}/{{proxy}}"}}
    stages:
      - name: prod
        variables: {{backend: "127.0.0.1:{prod}"}}
        canarySettings: {{percentTraffic: 10, stageVariableOverrides: {{backend: "127.0.0.1:{canary}"}}}}{mirror_line}
      - name: cached
        variables: {{backend: "127.0.0.1:{prod}"}}
        cache: {{enabled: true, ttlSeconds: 300}}
"""


class Target:
    def __init__(self, key, label, service, url, split=True, cache_url=None, cache_header=None):
        self.key, self.label, self.service, self.url = key, label, service, url
        self.split = split
        self.cache_url, self.cache_header = cache_url, cache_header


class Lab:
    """Every server the benchmark needs, started once."""

    def __init__(self, args, work):
        self.work = work
        self.services = []
        self.configs = {}
        try:
            self._start_all(args, work)
        except BaseException:
            self.stop()
            raise

    def _start_all(self, args, work):
        prod, canary = free_port(), free_port()
        self.prod, self.canary = prod, canary
        conf = write(f"{work}/backend.conf", backend_conf(work, prod, canary))
        self.configs["backend (nginx)"] = open(conf).read()
        self.backend = self.start("backend", ["nginx", "-c", conf, "-p", work])
        self.targets = {}
        self.admins = {}
        tracing = None
        if args.tracing is not None:
            sink = free_port()
            self.start("otlp-sink", [os.path.join(os.path.dirname(args.reaction_bin), "otlp-sink"), str(sink)])
            tracing = (sink, args.tracing)
        self.targets["direct"] = Target("direct", "direct to the backend (reference)", self.backend, f"http://127.0.0.1:{prod}/x", split=False)
        for log in (False, True):
            sfx = "+log" if log else ""
            tag = "-log" if log else ""
            port = free_port()
            conf = write(f"{work}/nginx{tag}.conf", nginx_conf(work, f"nginx{tag}", port, prod, canary, log))
            self.configs[f"nginx{sfx}"] = open(conf).read()
            svc = self.start(f"nginx{tag}", ["nginx", "-c", conf, "-p", work])
            self.targets[f"nginx{sfx}"] = Target(
                f"nginx{sfx}", f"nginx split_clients{', access log' if log else ''}", svc, f"http://127.0.0.1:{port}/x",
                cache_url=f"http://127.0.0.1:{port}/cached/item", cache_header="x-cache")
            port = free_port()
            conf = write(f"{work}/haproxy{tag}.cfg", haproxy_conf(port, prod, canary, log))
            self.configs[f"haproxy{sfx}"] = open(conf).read()
            svc = self.start(f"haproxy{tag}", ["haproxy", "-db", "-f", conf],
                             stdout=f"{work}/haproxy{tag}.access.log" if log else None)
            self.targets[f"haproxy{sfx}"] = Target(
                f"haproxy{sfx}", f"HAProxy weighted servers{', access log' if log else ''}", svc, f"http://127.0.0.1:{port}/x",
                cache_url=f"http://127.0.0.1:{port}/cached/item", cache_header="x-cache")
            port, admin = free_port(), free_port()
            mirror = args.mirror if not log else None
            conf = write(f"{work}/canarygate{tag}.yaml",
                         canarygate_conf(work, f"canarygate{tag}", port, admin, prod, canary, log, mirror, None if log else tracing,
                                         cohorts=bool(args.cohorts) and not log))
            self.admins[f"canarygate{sfx}"] = f"http://127.0.0.1:{admin}"
            self.configs[f"canarygate{sfx}"] = open(conf).read()
            env = dict(os.environ, CANARYGATE_WORKER_THREADS="1", CANARYGATE_LOG="warn")
            env.pop("CANARYGATE_GATEWAY_WORKERS", None)
            svc = self.start(f"canarygate{tag}", [args.bin, "serve", "--config", conf], env=env)
            self.targets[f"canarygate{sfx}"] = Target(
                f"canarygate{sfx}", f"canarygate{', access log' if log else ''}", svc, f"http://127.0.0.1:{port}/bench/prod/x",
                cache_url=f"http://127.0.0.1:{port}/bench/cached/item", cache_header="x-canarygate-cache")
        if args.ab:
            # The build before, with the same config, for an interleaved A/B of the request path.
            port, admin = free_port(), free_port()
            conf = write(f"{work}/canarygate-base.yaml", canarygate_conf(work, "canarygate-base", port, admin, prod, canary, False))
            env = dict(os.environ, CANARYGATE_WORKER_THREADS="1", CANARYGATE_LOG="warn")
            env.pop("CANARYGATE_GATEWAY_WORKERS", None)
            svc = self.start("canarygate-base", [args.ab, "serve", "--config", conf], env=env)
            self.targets["canarygate-base"] = Target("canarygate-base", "canarygate (baseline build)", svc,
                                                     f"http://127.0.0.1:{port}/bench/prod/x")
        for t in self.targets.values():
            wait_http(t.url, t.label)

    def start(self, name, argv, env=None, stdout=None):
        s = Service(name, argv, self.work, env=env, stdout=stdout)
        self.services.append(s)
        return s

    def stop(self):
        for s in reversed(self.services):
            s.stop()


# ---------------------------------------------------------------- checks and load


def check_split(t, n=1000):
    """n keep-alive requests: no errors, and about 10% canary where the target splits."""
    host, port, path = split_url(t.url)
    c = http.client.HTTPConnection(host, port, timeout=10)
    canary = errors = 0
    for _ in range(n):
        try:
            c.request("GET", path)
            r = c.getresponse()
            body = r.read()
        except OSError:
            errors += 1
            c.close()
            c = http.client.HTTPConnection(host, port, timeout=10)
            continue
        if r.status != 200:
            errors += 1
        if body == b"canary\n":
            canary += 1
    c.close()
    # 10% of 1,000 has a standard deviation of 9.5: 60..140 is beyond 4 sigma either side.
    lo, hi = (0.06 * n, 0.14 * n) if t.split else (0, 0)
    if errors or not lo <= canary <= hi:
        raise BenchError(f"{t.label}: split check failed: {canary} canary of {n}, {errors} errors (expected {lo:.0f}..{hi:.0f} canary, 0 errors)")
    return canary / n


def check_hit(t):
    host, port, path = split_url(t.cache_url)
    c = http.client.HTTPConnection(host, port, timeout=10)
    seen = None
    for _ in range(3):
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        if r.status != 200:
            raise BenchError(f"{t.label}: cached URL answered {r.status}")
        seen = r.getheader(t.cache_header, "")
    c.close()
    if seen.lower() != "hit":
        raise BenchError(f"{t.label}: the third request of {t.cache_url} was not a cache hit ({t.cache_header}: {seen!r})")


def run_wrk(url, seconds, conns):
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", url], capture_output=True, text=True, check=True).stdout
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    return reqs, rps, errors


def run_oha(url, extra):
    argv = ["oha", "--no-tui", "--output-format", "json", "--latency-correction", "-w"] + extra + [url]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    d = json.loads(out)
    codes = d.get("statusCodeDistribution", {})
    errors = sum(v for k, v in codes.items() if k != "200") + sum(d.get("errorDistribution", {}).values())
    return d, errors


# ---------------------------------------------------------------- groups


def med(xs):
    return statistics.median(xs)


def tcp_segments_sent():
    """TCP segments this machine has sent so far (`OutSegs` of /proc/net/snmp), over every socket: during a
    timed run, the client's, the proxy's both ways and the backend's. With loopback, each segment is one
    the kernel also receives, on the sender's time."""
    with open("/proc/net/snmp") as f:
        tcp = [line.split() for line in f if line.startswith("Tcp:")]
    return int(tcp[1][tcp[0].index("OutSegs")])


def interleaved(targets, reps, seconds, warmup, conns, url_of):
    """Runs every target once per repetition, in a rotating order; returns {key: [result, ...]}."""
    for t in targets:
        run_wrk(url_of(t), warmup, conns)
    results = {t.key: [] for t in targets}
    for rep in range(reps):
        order = targets[rep % len(targets):] + targets[: rep % len(targets)]
        for t in order:
            (u0, s0), g0 = t.service.cpu_split(), tcp_segments_sent()
            reqs, rps, errors = run_wrk(url_of(t), seconds, conns)
            (u1, s1), g1 = t.service.cpu_split(), tcp_segments_sent()
            if errors:
                raise BenchError(f"{t.label}: {errors} errors in a measured run")
            n = max(reqs, 1)
            r = {"rps": rps, "cpu_us": (u1 - u0 + s1 - s0) * 1e6 / n, "user_us": (u1 - u0) * 1e6 / n, "system_us": (s1 - s0) * 1e6 / n,
                 "segments": (g1 - g0) / n, "requests": reqs, "rep": rep}
            results[t.key].append(r)
            print(f"  rep {rep + 1}/{reps} {t.label:<40} {rps:>10.0f} req/s {r['cpu_us']:>6.1f} µs/request", flush=True)
    return results


def syscalls_per_request(service, measure):
    """System calls per request of `service`'s processes while `measure()` (which returns the requests it
    made) runs under `strace -c -f`; None without strace. Counted in a run of its own: strace slows the
    proxy, so its CPU is not measured there."""
    if service is None or not shutil.which("strace"):
        return None
    fd, out = tempfile.mkstemp(suffix=".strace")
    os.close(fd)
    argv = ["strace", "-c", "-f", "-o", out]
    for pid in service.pids():
        argv += ["-p", str(pid)]
    tracer = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # strace says "Process N attached" once it follows a process: wait for the first.
    deadline = time.time() + 10
    while time.time() < deadline and "attached" not in (tracer.stderr.readline() or "attached"):
        pass
    try:
        requests = measure()
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=60)
    calls = None
    with open(out) as f:
        for line in f:
            fields = line.split()
            if fields and fields[-1] == "total" and len(fields) >= 5:
                calls = int(fields[3])
    os.unlink(out)
    return calls / max(requests, 1) if calls is not None else None


def group_split(lab, args, keys):
    targets = [lab.targets[k] for k in keys]
    shares = {}
    for t in targets:
        shares[t.key] = check_split(t)
    res = interleaved(targets, args.reps, args.duration, args.warmup, args.conns, lambda t: t.url)
    calls = {}
    for t in targets:
        calls[t.key] = syscalls_per_request(t.service if t.key != "direct" else None,
                                            lambda t=t: run_wrk(t.url, min(args.duration, 3), args.conns)[0])
        if calls[t.key] is not None:
            print(f"  {t.label:<40} {calls[t.key]:.2f} system calls/request (strace -c)", flush=True)
    return {"share": shares, "runs": res, "syscalls": calls}


def ab_compare(lab, args):
    """This build against a baseline build, interleaved: CPU per request and requests/s."""
    keys = ["canarygate", "canarygate-base"]
    for k in keys:
        check_split(lab.targets[k])
    mirroring = f" (this build mirroring {args.mirror}% of production requests)" if args.mirror is not None else ""
    if args.cohorts:
        mirroring += " (this build's stage with four cohort rules no request matches)"
    if args.tracing is not None:
        mirroring += f" (this build tracing at sampleRatio {args.tracing}, exporting to an OTLP sink)"
    print(f"== A/B: this build{mirroring} vs {args.ab}, {args.reps} interleaved rounds of {args.duration} s", flush=True)
    res = interleaved([lab.targets[k] for k in keys], args.reps, args.duration, args.warmup, args.conns, lambda t: t.url)
    cpu = {k: [r["cpu_us"] for r in res[k]] for k in keys}
    rps = {k: [r["rps"] for r in res[k]] for k in keys}
    ratios = [a / b for a, b in zip(cpu["canarygate"], cpu["canarygate-base"])]
    for k in keys:
        print(f"{k:>16}: CPU {med(cpu[k]):.2f} µs/request (range {min(cpu[k]):.2f}-{max(cpu[k]):.2f}), "
              f"{med(rps[k]):.0f} req/s (range {min(rps[k]):.0f}-{max(rps[k]):.0f})")
    spread = max((max(v) - min(v)) / med(v) for v in cpu.values())
    print(f"CPU ratio this/base per round: {', '.join(f'{r:.3f}' for r in ratios)}; median {med(ratios):.3f}; "
          f"run-to-run spread of one build up to {spread * 100:.1f}%")
    rps_ratios = [a / b for a, b in zip(rps["canarygate"], rps["canarygate-base"])]
    print(f"requests/s ratio this/base per round: {', '.join(f'{r:.3f}' for r in rps_ratios)}; median {med(rps_ratios):.3f}")
    if args.tracing is not None:
        text = urllib.request.urlopen(f"{lab.admins['canarygate']}/metrics", timeout=10).read().decode()
        spans = [l for l in text.splitlines() if l.startswith("canarygate_trace_spans_")]
        print("spans: " + "; ".join(spans))


def group_latency(lab, args, nginx_rps):
    keys = ["direct", "nginx", "haproxy", "canarygate"]
    out = {"nginx_rps": nginx_rps, "rates": {}}
    for pct in (25, 50, 75):
        rate = int(nginx_rps * pct / 100)
        per = {k: [] for k in keys}
        for rep in range(args.latency_reps):
            for k in keys[rep % len(keys):] + keys[: rep % len(keys)]:
                d, errors = run_oha(lab.targets[k].url, ["-z", f"{args.latency_duration}s", "-q", str(rate), "-c", "64"])
                if errors:
                    raise BenchError(f"{lab.targets[k].label}: {errors} errors at {rate} req/s")
                p = d["latencyPercentiles"]
                r = {"p50": p["p50"] * 1e6, "p99": p["p99"] * 1e6, "p999": p["p99.9"] * 1e6, "rps": d["summary"]["requestsPerSec"]}
                per[k].append(r)
                print(f"  {pct}% ({rate} req/s) rep {rep + 1} {k:<12} p50 {r['p50']:>7.0f} µs p99 {r['p99']:>7.0f} µs p99.9 {r['p999']:>7.0f} µs", flush=True)
        out["rates"][pct] = {"rate": rate, "runs": per}
    return out


def group_memory(lab, args):
    out = {}
    for k in ["direct", "nginx", "haproxy", "canarygate"]:
        t = lab.targets[k]
        before = t.service.rss_mib()
        d, errors = run_oha(t.url, ["-n", str(args.memory_requests), "-c", "1000"])
        if errors:
            raise BenchError(f"{t.label}: {errors} errors in the memory run")
        after = t.service.rss_mib()
        time.sleep(args.settle)
        settled = t.service.rss_mib()
        out[k] = {"before": before, "after": after, "settled": settled, "rps": d["summary"]["requestsPerSec"]}
        print(f"  {k:<12} RSS {before:.1f} MiB before, {after:.1f} MiB right after {args.memory_requests} requests over 1000 connections, "
              f"{settled:.1f} MiB {args.settle} s later", flush=True)
    return out


def group_cache(lab, args):
    targets = [lab.targets[k] for k in ["nginx", "haproxy", "canarygate"]]
    for t in targets:
        check_hit(t)
    return {"runs": interleaved(targets, args.reps, args.duration, args.warmup, args.conns, lambda t: t.cache_url)}


def group_reaction(args):
    env = dict(os.environ, CANARYGATE_BIN=args.bin, REACTION_RUNS=str(args.reaction_runs))
    p = subprocess.run([args.reaction_bin], env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise BenchError(f"reaction-time failed:\n{p.stdout}\n{p.stderr}")
    print("\n".join("  " + line for line in p.stdout.splitlines() if not line.startswith("{")), flush=True)
    last = [line for line in p.stdout.splitlines() if line.startswith("{")][-1]
    return json.loads(last)


# ---------------------------------------------------------------- report


def fmt_range(xs, f="{:.0f}"):
    return f"{f.format(med(xs))} ({f.format(min(xs))}–{f.format(max(xs))})"


def ratio_per_rep(runs, a, b, field):
    """Median over repetitions of a/b, both measured in the same repetition."""
    rb = {r["rep"]: r[field] for r in runs[b]}
    xs = [r[field] / rb[r["rep"]] for r in runs[a] if r["rep"] in rb]
    return xs


def version(argv, pattern=None):
    try:
        p = subprocess.run(argv, capture_output=True, text=True)
        text = (p.stdout + p.stderr).strip()
    except OSError:
        return "not found"
    if pattern:
        m = re.search(pattern, text)
        return m.group(0) if m else text.splitlines()[0]
    return text.splitlines()[0] if text else "?"


def machine():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) // 1024
    return f"{os.cpu_count()} cores ({model}), {mem // 1024} GiB, Linux {os.uname().release}"


def split_table(info, runs, keys, shares, syscalls=None):
    lines = ["| target | requests/s | proxy CPU µs/request | of which user + system (medians) | system calls/request | TCP segments/request | canary share (check) |", "|---|---|---|---|---|---|---|"]
    for k in keys:
        rs = runs[k]
        share = f"{shares[k] * 100:.1f}%" if info["split"][k] else "— (no split)"
        n = (syscalls or {}).get(k)
        calls = f"{n:.2f}" if n is not None else "—"
        if all("user_us" in r for r in rs):
            parts = f"{med([r['user_us'] for r in rs]):.1f} + {med([r['system_us'] for r in rs]):.1f}"
        else:
            parts = "—"
        segments = f"{med([r['segments'] for r in rs]):.2f}" if all("segments" in r for r in rs) else "—"
        lines.append(f"| {info['labels'][k]} | {fmt_range([r['rps'] for r in rs])} | {fmt_range([r['cpu_us'] for r in rs], '{:.1f}')} | {parts} | {calls} | {segments} | {share} |")
    return "\n".join(lines)


def ratios_table(runs, pairs):
    lines = ["| | requests/s ratio | CPU per request ratio |", "|---|---|---|"]
    for a, b, label in pairs:
        rr = ratio_per_rep(runs, a, b, "rps")
        cr = ratio_per_rep(runs, a, b, "cpu_us")
        lines.append(f"| {label} | {fmt_range(rr, '{:.2f}')}× | {fmt_range(cr, '{:.2f}')}× |")
    return "\n".join(lines)


def build_report(info, R):
    a = info["args"]
    env = info["env"]
    L = []
    L.append("# Benchmarks\n")
    L.append(f"Written by `{env['cmdline']}` on {env['time']}; do not edit by hand: the notes at the end come from "
             "`bench/notes.md`, the raw results are in `docs/benchmarks.json`.\n")
    L.append("## Machine, versions, method\n")
    L.append(f"- Machine: {env['machine']}. Everything runs on this one machine over loopback: the load tool, the "
             "proxy and the backend share its cores.")
    L.append(f"- canarygate {env['rev']} (release build: fat LTO, codegen-units 1, jemalloc), {env['tools']}.")
    L.append("- Backend: nginx `return 200` with one worker on a production port and a canary port (bodies "
             "`production\\n` and `canary\\n`).")
    L.append("- Proxies, each with one worker and keep-alive on both sides: nginx `split_clients` on `$request_id` "
             "(10% canary) with `keepalive 64` upstreams; HAProxy `nbthread 1`, `balance random` over servers "
             "weighted 90/10, `http-reuse always`; canarygate `workers: 1` (one single-threaded data-plane "
             "runtime; the control plane's runtime has `CANARYGATE_WORKER_THREADS=1`), a stage with "
             "`canarySettings.percentTraffic: 10`. Access logs off, and a second set of the three with "
             "their default access logs on (nginx: a file, unbuffered; HAProxy: `log stdout` with "
             "`option httplog` to a file; canarygate: its access log files).")
    L.append(f"- Saturated throughput: `wrk -t1 -c{a['conns']} -d{a['duration']}s`, after a {a['warmup']} s "
             f"warm-up per target, {a['reps']} repetitions, targets interleaved in a rotating order; medians "
             "with min–max. Proxy CPU is the utime+stime the proxy's processes (nginx: master and worker; "
             "HAProxy: its process; canarygate: its process, all threads) used during the run, from "
             "`/proc/<pid>/stat`, divided by the requests wrk completed. Ratios are taken within the same "
             "repetition, then the median.")
    L.append(f"- Latency: `oha --latency-correction -c 64 -q RATE -z {a['latency_duration']}s` (open loop: "
             "latency counts from when each request was due) at 25%, 50% and 75% of nginx's median saturated "
             f"rate, {a['latency_reps']} repetitions per target, interleaved; medians of each percentile.")
    L.append(f"- Memory: resident set (VmRSS, summed over the proxy's processes) right after `oha -n {a['memory_requests']} -c 1000` "
             f"against a freshly started proxy, and again {a['settle']} s later (idle).")
    L.append("- Before measuring, each target answers 1,000 keep-alive requests with no error and a canary "
             "share within 6–14%; a measured run with any error or non-2xx answer stops the harness.\n")

    if "split" in R:
        keys = ["direct", "nginx", "haproxy", "canarygate"]
        L.append("## 90/10 split, access logs off\n")
        L.append(split_table(info, R["split"]["runs"], keys, R["split"]["share"], R["split"].get("syscalls")) + "\n")
        L.append(ratios_table(R["split"]["runs"], [("canarygate", "nginx", "canarygate / nginx"), ("canarygate", "haproxy", "canarygate / HAProxy")]) + "\n")
    if "logs" in R:
        keys = ["nginx+log", "haproxy+log", "canarygate+log"]
        L.append("## 90/10 split, access logs on\n")
        L.append(split_table(info, R["logs"]["runs"], keys, R["logs"]["share"], R["logs"].get("syscalls")) + "\n")
        L.append(ratios_table(R["logs"]["runs"], [("canarygate+log", "nginx+log", "canarygate / nginx"), ("canarygate+log", "haproxy+log", "canarygate / HAProxy")]) + "\n")
    if "latency" in R:
        lat = R["latency"]
        L.append("## Latency at fixed rates (µs)\n")
        L.append(f"Rates are shares of nginx's median saturated rate, {lat['nginx_rps']:.0f} req/s.\n")
        L.append("| load | target | achieved req/s | p50 | p99 | p99.9 |")
        L.append("|---|---|---|---|---|---|")
        for pct, v in lat["rates"].items():
            for k, rs in v["runs"].items():
                L.append(f"| {pct}% ({v['rate']} req/s) | {info['labels'][k]} | {med([r['rps'] for r in rs]):.0f} | "
                         f"{fmt_range([r['p50'] for r in rs])} | {fmt_range([r['p99'] for r in rs])} | {fmt_range([r['p999'] for r in rs])} |")
        L.append("")
    if "memory" in R:
        L.append("## Resident memory after the connections and requests\n")
        L.append(f"| target | before | right after | {a['settle']} s later | req/s during the run |")
        L.append("|---|---|---|---|---|")
        for k, v in R["memory"].items():
            L.append(f"| {info['labels'][k]} | {v['before']:.1f} MiB | {v['after']:.1f} MiB | {v['settled']:.1f} MiB | {v['rps']:.0f} |")
        L.append("")
    if "cache" in R:
        L.append("## Cached hit (the same URL, served from the proxy's cache)\n")
        L.append("| target | requests/s | proxy CPU µs/request |")
        L.append("|---|---|---|")
        labels = {"nginx": "nginx proxy_cache", "haproxy": "HAProxy cache", "canarygate": "canarygate stage cache"}
        for k, rs in R["cache"]["runs"].items():
            L.append(f"| {labels[k]} | {fmt_range([r['rps'] for r in rs])} | {fmt_range([r['cpu_us'] for r in rs], '{:.1f}')} |")
        L.append("")
    if "reaction" in R:
        xs = R["reaction"]["reaction_ms"]
        L.append("## Rollback reaction time\n")
        L.append(f"From the canary's first failing request to canary weight 0 (alarm on the canary's 5XXError "
                 f"Average > 0.05 over 1 s periods, 2 of 3 datapoints), {len(xs)} runs: median **{med(xs):.0f} ms** "
                 f"(min {min(xs):.0f}, max {max(xs):.0f}). CodeDeploy's CloudWatch alarms have one-minute periods: "
                 "the same 2-of-3 rule needs at least 120 s there.\n")

    if all(g in R for g in ("split", "latency", "memory")):
        runs = R["split"]["runs"]
        L.append("## Targets\n")
        L.append("| target | measured | verdict |")
        L.append("|---|---|---|")
        # (what, the proxy compared with, the bound); the request path's second round set the 0.85 and
        # 0.9 rows (its TLS and HTTP/2 rows are in their section).
        names = {"nginx": "nginx", "haproxy": "HAProxy"}
        cpu = {b: med(ratio_per_rep(runs, "canarygate", b, "cpu_us")) for b in names}
        rps = {b: med(ratio_per_rep(runs, "canarygate", b, "rps")) for b in names}
        for label, x, target, low in (
            [(f"CPU per request ≤ 0.8× {names[b]}'s", cpu[b], 0.8, True) for b in names]
            + [(f"CPU per request ≤ {t}× {names[b]}'s (request path, second round)", cpu[b], t, True)
               for b, t in (("nginx", 0.85), ("haproxy", 0.9))]
            + [(f"saturated requests/s ≥ 1.1× {names[b]}'s", rps[b], 1.1, False) for b in names]
        ):
            L.append(f"| {label} | {x:.2f}× | {verdict(x, target, low)} |")
        half = R["latency"]["rates"][50]["runs"]
        cg, ng = med([r["p99"] for r in half["canarygate"]]), med([r["p99"] for r in half["nginx"]])
        L.append(f"| p99 at 50% load ≤ nginx's | {cg:.0f} µs vs {ng:.0f} µs | {verdict(cg, ng, True)} |")
        rss = R["memory"]["canarygate"]["after"]
        settled = R["memory"]["canarygate"]["settled"]
        L.append(f"| resident memory ≤ 64 MiB after {a['memory_requests']} requests over 1,000 connections | {rss:.1f} MiB right after "
                 f"({settled:.1f} MiB {a['settle']} s later) | {verdict(rss, 64, True)} |")
        L.append("")

    if info.get("chart"):
        L.append("![requests/s, CPU per request and p99 latency of each proxy](benchmarks.png)\n")
    L.append("## Configurations\n")
    for name, text in info["configs"].items():
        L.append(f"<details><summary>{name}</summary>\n\n```text\n{text.strip()}\n```\n</details>\n")
    notes = os.path.join(info["root"], "bench", "notes.md")
    if os.path.exists(notes):
        L.append(open(notes).read().strip() + "\n")
    return "\n".join(L)


def environment(args, cmdline):
    tools = ", ".join([
        version(["nginx", "-v"], r"nginx/[0-9.]+"),
        version(["haproxy", "-v"], r"HAProxy version [0-9.]+"),
        version(["wrk", "-v"], r"wrk \S+"),
        version(["oha", "--version"]),
        version(["rustc", "-V"]),
    ])
    return {
        "cmdline": cmdline,
        "time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "rev": args.rev,
        "machine": machine(),
        "tools": tools,
    }


def chart(R, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["direct", "nginx", "haproxy", "canarygate"]
    names = ["direct", "nginx", "HAProxy", "canarygate"]
    colors = ["#9e9e9e", "#2e7d32", "#1565c0", "#ef6c00"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    runs = R["split"]["runs"]

    def bars(ax, field, title, unit):
        vals = [med([r[field] for r in runs[k]]) for k in keys]
        lo = [v - min(r[field] for r in runs[k]) for v, k in zip(vals, keys)]
        hi = [max(r[field] for r in runs[k]) - v for v, k in zip(vals, keys)]
        ax.bar(names, vals, color=colors, yerr=[lo, hi], capsize=4)
        ax.set_title(title)
        ax.set_ylabel(unit)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:,.0f}" if v > 100 else f"{v:.1f}", ha="center", va="bottom", fontsize=9)

    bars(axes[0], "rps", "Saturated throughput, 90/10 split", "requests/s (wrk -t1 -c32)")
    bars(axes[1], "cpu_us", "Proxy CPU per request", "µs of CPU per request")
    if "latency" in R:
        ax = axes[2]
        pcts = list(R["latency"]["rates"].keys())
        width = 0.2
        for i, (k, n, c) in enumerate(zip(keys, names, colors)):
            ys = [med([r["p99"] for r in R["latency"]["rates"][p]["runs"][k]]) / 1000 for p in pcts]
            ax.bar([j + (i - 1.5) * width for j in range(len(pcts))], ys, width, label=n, color=c)
        ax.set_xticks(range(len(pcts)))
        ax.set_xticklabels([f"{p}% of nginx max" for p in pcts])
        ax.set_title("p99 latency at fixed rates (oha, corrected)")
        ax.set_ylabel("ms")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------- main


KEPT_SECTIONS = [("<!-- sticky:begin -->", "<!-- sticky:end -->"), ("<!-- scale:begin -->", "<!-- scale:end -->"), ("<!-- protocols:begin -->", "<!-- protocols:end -->"), ("<!-- cluster:begin -->", "<!-- cluster:end -->"), ("<!-- analysis:begin -->", "<!-- analysis:end -->")]


def write_marked_section(report_path, text, begin, end):
    """Replaces (or appends) the section of the report between the markers `begin` and `end`."""
    try:
        old = open(report_path).read()
    except OSError:
        old = ""
    i, j = old.find(begin), old.find(end)
    if i >= 0 and j > i:
        new = old[:i] + text.rstrip("\n") + old[j + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + text
    with open(report_path, "w") as f:
        f.write(new)


def with_kept_sections(path, report):
    """The scale group and the canary analysis benchmark (bash bench/analysis) write their own marked
    sections of the report; a rewrite of the proxy benchmark keeps them."""
    try:
        old = open(path).read()
    except OSError:
        return report
    for begin, end in KEPT_SECTIONS:
        i, j = old.find(begin), old.find(end)
        if i >= 0 and j > i and begin not in report:
            report = report.rstrip("\n") + "\n\n" + old[i:j + len(end)] + "\n"
    return report


def rewrite_report(raw_path):
    with open(raw_path) as f:
        data = json.load(f)
    info, R = data["info"], data["results"]
    if "latency" in R:  # JSON turned the rate keys into strings
        R["latency"]["rates"] = {int(k): v for k, v in R["latency"]["rates"].items()}
    out_dir = os.path.dirname(os.path.abspath(raw_path))
    if info.get("chart"):
        chart(R, os.path.join(out_dir, "benchmarks.png"))
    path = os.path.join(out_dir, "BENCHMARKS.md")
    report = with_kept_sections(path, build_report(info, R))
    with open(path, "w") as f:
        f.write(report)
    print(f"bench: report rewritten in {out_dir}")



def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True)
    ap.add_argument("--bin", required=True, help="the canarygate binary")
    ap.add_argument("--reaction-bin", required=True)
    ap.add_argument("--quick", action="store_true", help="a few seconds per target; asserts the split and zero errors only")
    ap.add_argument("--only", help=f"comma-separated groups of {GROUPS} (default: all; with --ab: split)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--duration", type=int, default=10, help="seconds per saturated run")
    ap.add_argument("--out", help="report path (default: docs/BENCHMARKS.md for a full run, else a temp dir)")
    ap.add_argument("--report-from", help="rewrite the report (and chart) next to this benchmarks.json without measuring")
    ap.add_argument("--ab", help="a baseline canarygate binary: measure it and this build interleaved (--reps rounds) "
                                 "and print CPU per request and requests/s of both; the split, or with --only split "
                                 "and/or protocols those groups' rows; nothing is written to the report")
    ap.add_argument("--tracing", type=float, help="with --ab: this build exports traces to an OTLP sink at this sample "
                                                    "ratio (the cost of tracing)")
    ap.add_argument("--mirror", type=float, help="with --ab: this build's split stage also mirrors this percentage of its "
                                                   "production requests to the canary (the cost of mirroring)")
    ap.add_argument("--cohorts", action="store_true", help="with --ab: this build's split stage has four cohort rules "
                                                          "that no request matches (the cost of evaluating them)")
    args = ap.parse_args()
    if args.tracing is not None and not args.ab:
        ap.error("--tracing: only with --ab (it changes this build's config, not the report's)")
    if args.mirror is not None and not args.ab:
        ap.error("--mirror: only with --ab (it changes this build's config, not the report's)")
    if args.report_from:
        rewrite_report(args.report_from)
        return
    if args.only is None:
        args.only = "split" if args.ab else ",".join(GROUPS)
    only = [g.strip() for g in args.only.split(",") if g.strip()]
    bad = [g for g in only if g not in GROUPS]
    if bad:
        ap.error(f"--only: unknown group(s) {bad}; known: {GROUPS}")
    if args.ab and not set(only) <= {"split", "protocols"}:
        ap.error(f"--only with --ab: split and/or protocols, not {only}")
    args.conns = 32
    if args.quick:
        args.reps, args.duration, args.warmup = 1, 2, 1
        args.latency_reps, args.latency_duration = 1, 2
        args.memory_requests, args.reaction_runs, args.settle = 20000, 1, 1
    else:
        args.warmup = 3
        args.latency_reps, args.latency_duration = 3, 10
        args.memory_requests, args.reaction_runs, args.settle = 1_000_000, 10, 15
    full = not args.quick and set(only) == set(GROUPS)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))

    # The tree as the run starts: the run itself writes into docs/, which would mark it dirty.
    args.rev = version(["git", "-C", args.root, "describe", "--always", "--dirty"])
    work = tempfile.mkdtemp(prefix="canarygate-bench-")
    os.chmod(work, 0o755)  # nginx workers run as an unprivileged user and write the proxy cache here
    out_dir = os.path.join(args.root, "docs") if full and not args.out else work
    report_path = args.out or os.path.join(out_dir, "BENCHMARKS.md")
    user_args = [a for a in sys.argv[1:] if a not in (args.root, args.bin, args.reaction_bin, "--root", "--bin", "--reaction-bin")]
    cmdline = " ".join(["bash bench/run"] + user_args)
    lab = None
    R = {}
    try:
        if "scale" in only and not args.ab:
            print("== scale", flush=True)
            import scale
            rows = scale.run(sys.modules[__name__], args, work)
            if not args.quick:
                docs = os.path.join(args.root, "docs")
                chart_name = None
                try:
                    scale.chart(rows, os.path.join(docs, "scale.png"))
                    chart_name = "scale.png"
                except ImportError:
                    print("bench: matplotlib missing, no scale chart", flush=True)
                with open(os.path.join(docs, "scale-benchmark.json"), "w") as f:
                    json.dump({"env": environment(args, cmdline), "rows": rows}, f, indent=1)
                write_marked_section(os.path.join(docs, "BENCHMARKS.md"),
                                     scale.section(rows, "bash bench/run --only scale", chart_name, environment(args, cmdline)),
                                     scale.SCALE_BEGIN, scale.SCALE_END)
                print("bench: scale section written to docs/BENCHMARKS.md", flush=True)
            if only == ["scale"]:
                return
        if args.ab and "protocols" in only:
            print(f"== A/B of the TLS and HTTP/2 rows: this build vs {args.ab}, {args.reps} interleaved rounds of "
                  f"{args.duration} s", flush=True)
            import protocols
            for line in protocols.ab_summary(protocols.run(sys.modules[__name__], args, work, ab=True)):
                print(line, flush=True)
            if only == ["protocols"]:
                return
        # Groups that start their own servers and write their own marked section of the report.
        for group, title in (("protocols", "TLS, HTTP/2"), ("cluster", "3 replicas on PostgreSQL")):
            if group not in only or args.ab:
                continue
            print(f"== {group} ({title})", flush=True)
            module = importlib.import_module(group)
            res = module.run(sys.modules[__name__], args, work)
            if not args.quick:
                docs = os.path.join(args.root, "docs")
                with open(os.path.join(docs, f"{group}-benchmark.json"), "w") as f:
                    json.dump({"env": environment(args, cmdline), "results": res}, f, indent=1)
                write_marked_section(os.path.join(docs, "BENCHMARKS.md"),
                                     module.section(res, f"bash bench/run --only {group}", environment(args, cmdline)),
                                     module.BEGIN, module.END)
                print(f"bench: {group} section written to docs/BENCHMARKS.md", flush=True)
        if all(g in ("scale", "protocols", "cluster") for g in only):
            return
        lab = Lab(args, work)
        print(f"bench: servers up in {work}", flush=True)
        info = {
            "root": args.root,
            "labels": {k: t.label for k, t in lab.targets.items()},
            "split": {k: t.split for k, t in lab.targets.items()},
            "configs": lab.configs,
            "args": {k: getattr(args, k) for k in ("reps", "duration", "warmup", "conns", "latency_reps", "latency_duration", "memory_requests", "settle")},
            "env": environment(args, cmdline),
        }
        if args.ab:
            ab_compare(lab, args)
            return
        if "memory" in only:
            print("== memory", flush=True)
            R["memory"] = group_memory(lab, args)
        if "split" in only or "latency" in only:
            print("== split (access logs off)", flush=True)
            R["split"] = group_split(lab, args, ["direct", "nginx", "haproxy", "canarygate"])
        if "logs" in only:
            print("== split (access logs on)", flush=True)
            R["logs"] = group_split(lab, args, ["nginx+log", "haproxy+log", "canarygate+log"])
        if "latency" in only:
            print("== latency at fixed rates", flush=True)
            nginx_rps = med([r["rps"] for r in R["split"]["runs"]["nginx"]])
            R["latency"] = group_latency(lab, args, nginx_rps)
        if "cache" in only:
            print("== cached hit", flush=True)
            R["cache"] = group_cache(lab, args)
        if "reaction" in only:
            print("== reaction time", flush=True)
            R["reaction"] = group_reaction(args)
        if not args.quick and "split" in R:
            try:
                chart(R, os.path.join(os.path.dirname(report_path), "benchmarks.png"))
                info["chart"] = True
            except ImportError:
                print("bench: matplotlib missing, no chart", flush=True)
        report = with_kept_sections(report_path, build_report(info, R))
        with open(report_path, "w") as f:
            f.write(report)
        raw = os.path.join(os.path.dirname(report_path), "benchmarks.json")
        with open(raw, "w") as f:
            json.dump({"info": info, "results": R}, f, indent=1)
        print(f"bench: report written to {report_path}", flush=True)
        if args.quick:
            print("bench: quick run passed (the split was checked and no run had an error; speeds are not asserted)")
    except BenchError as e:
        print(f"bench: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        if lab:
            lab.stop()
        if not os.environ.get("BENCH_KEEP"):
            clear_work(work, keep_report=out_dir == work and not args.out)


def clear_work(work, keep_report):
    """Removes the run's directory, or, when the report was written into it (a partial or quick run),
    all of it but the report: the servers' data, logs and caches come to hundreds of MB a run, and a
    machine that runs the suite every day would fill its disk with them."""
    if not keep_report:
        shutil.rmtree(work, ignore_errors=True)
        return
    for name in os.listdir(work):
        if name in ("BENCHMARKS.md", "benchmarks.json", "benchmarks.png"):
            continue
        path = os.path.join(work, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.remove(path)
            except OSError:
                pass


if __name__ == "__main__":
    main()
