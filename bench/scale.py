"""The scale group of the benchmark (`bash bench/run --only scale`): cost against the size of the
configuration, at 1, 100, 1,000 and 10,000 APIs of 10 routes and one stage each (10% of the stages with a
canary at 10%), all on one fast backend (nginx `return 200`):

  start      seconds from spawning `canarygate serve --config FILE` to the last API's stage answering
  idle       resident memory (VmRSS) 15 s after that (jemalloc gives back what seeding freed within about
             10 s), no request served yet
  traffic    resident memory after 20 s of requests spread over 1% of the stages (at least one), wrk with
             32 connections and a Lua script that picks a stage and a route at random per request
  rps, cpu   requests/s of that traffic and canarygate's CPU µs per request over it
  patch      p50/p99 of 100 PATCHes (a stage variable of a random stage), sent one after the other while
             the same traffic runs again

with nginx's idle memory and start time for the same number of `location`s (and one `split_clients` per
canary stage) as the anchor. Imported by harness.py; results go into a marked section of
docs/BENCHMARKS.md (kept by full runs of the other groups) and docs/scale.png.
"""

import json
import os
import random
import statistics
import subprocess
import time
import urllib.request

SCALE_BEGIN, SCALE_END = "<!-- scale:begin -->", "<!-- scale:end -->"


def canarygate_config(w, port, admin, backend, n):
    lines = [
        "server:",
        f"  listen: 127.0.0.1:{port}",
        f"  adminListen: 127.0.0.1:{admin}",
        f"  dataDir: {w}/scale-{n}-data",
        "  workers: 1",
        "  accessLog: {enabled: false}",
        "apis:",
    ]
    for i in range(n):
        lines.append(f"  - name: api-{i}")
        lines.append("    routes:")
        for r in range(10):
            lines.append(f'      - {{method: GET, path: "/r{r}/{{id}}", '
                         f'integration: {{type: http, uri: "http://${{stageVariables.backend}}/r{r}/{{id}}"}}}}')
        lines.append("    stages:")
        lines.append("      - name: prod")
        lines.append(f'        variables: {{backend: "127.0.0.1:{backend}"}}')
        if i % 10 == 0:
            lines.append(f'        canarySettings: {{percentTraffic: 10, stageVariableOverrides: {{backend: "127.0.0.1:{backend}"}}}}')
    return "\n".join(lines) + "\n"


def nginx_config(w, port, backend, n):
    """The same routing in nginx: a location per API stage, a split_clients per canary stage."""
    out = [f"worker_processes 1; daemon off; pid {w}/scale-nginx-{n}.pid; error_log {w}/scale-nginx-{n}.error.log;",
           "events { worker_connections 4096; }",
           "http { access_log off; proxy_http_version 1.1;",
           f"  upstream prod {{ server 127.0.0.1:{backend}; keepalive 32; }}",
           f"  upstream canary {{ server 127.0.0.1:{backend}; keepalive 32; }}"]
    for i in range(0, n, 10):
        out.append(f'  split_clients "${{request_id}}" $v{i} {{ 10% canary; * prod; }}')
    out.append(f"  server {{ listen 127.0.0.1:{port};")
    for i in range(n):
        target = f"$v{i}" if i % 10 == 0 else "prod"
        for r in range(10):
            out.append(f'    location /api-{i}/prod/r{r}/ {{ proxy_set_header Connection ""; proxy_pass http://{target}/r{r}/; }}')
    out.append("  } }")
    return "\n".join(out) + "\n"


def get(url, timeout=2):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        r.read()
        return r.status


def wait_until_serving(url, timeout):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            if get(url) == 200:
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"{url} did not answer 200 within {timeout} s")


def patch(admin, api, value):
    body = json.dumps({"patchOperations": [{"op": "replace", "path": "/variables/x", "value": value}]}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{admin}/v1/apis/{api}/stages/prod", data=body, method="PATCH",
                                 headers={"content-type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=30) as r:
        r.read()
        if r.status != 200:
            raise RuntimeError(f"PATCH {api}: {r.status}")
    return (time.perf_counter() - t0) * 1000


def wrk_script(w, n, stages):
    path = os.path.join(w, f"scale-{n}.lua")
    with open(path, "w") as f:
        f.write("paths = {" + ",".join(f'"/api-{i}/prod/r%d/42"' for i in stages) + "}\n")
        f.write("request = function()\n"
                "  return wrk.format('GET', string.format(paths[math.random(#paths)], math.random(0, 9)))\n"
                "end\n")
    return path


def one_size(h, args, w, backend, n, seconds):
    port, admin = h.free_port(), h.free_port()
    conf = h.write(f"{w}/scale-{n}.yaml", canarygate_config(w, port, admin, backend, n))
    env = dict(os.environ, CANARYGATE_WORKER_THREADS="1", CANARYGATE_LOG="warn")
    env.pop("CANARYGATE_GATEWAY_WORKERS", None)
    t0 = time.time()
    svc = h.Service(f"scale-{n}", [args.bin, "serve", "--config", conf], w, env=env)
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/api-{n - 1}/prod/r9/1", 120)
        start = time.time() - t0
        time.sleep(3 if args.quick else 15)
        idle = svc.rss_mib()
        stages = list(range(0, n, 100)) if n >= 100 else [0]
        script = wrk_script(w, n, stages)
        url = f"http://127.0.0.1:{port}"
        # Warm up, then measure the traffic and, meanwhile, PATCH latency.
        subprocess.run(["wrk", "-t1", "-c32", "-d2s", "-s", script, url], capture_output=True, check=True)
        # CPU per request of traffic to one stage (api-0's), as in the 1-API case: what the size of the
        # configuration costs a request.
        one = wrk_script(w, f"{n}-one", [0])
        c0 = svc.cpu_seconds()
        out = subprocess.run(["wrk", "-t1", "-c32", f"-d{seconds}s", "-s", one, url], capture_output=True, text=True,
                             check=True).stdout
        c1 = svc.cpu_seconds()
        one_reqs = int(out.split(" requests in")[0].split()[-1])
        if "Non-2xx" in out or "Socket errors" in out:
            raise RuntimeError(f"{n} APIs: errors in the one-stage run:\n{out}")
        one_cpu = (c1 - c0) / one_reqs * 1e6
        c0 = svc.cpu_seconds()
        out = subprocess.run(["wrk", "-t1", "-c32", f"-d{seconds}s", "-s", script, url], capture_output=True, text=True,
                             check=True).stdout
        c1 = svc.cpu_seconds()
        traffic = svc.rss_mib()
        reqs = int(out.split(" requests in")[0].split()[-1])
        if "Non-2xx" in out or "Socket errors" in out:
            raise RuntimeError(f"{n} APIs: errors in the traffic run:\n{out}")
        # PATCHes while the same traffic runs again.
        wrk = subprocess.Popen(["wrk", "-t1", "-c32", f"-d{seconds}s", "-s", script, url], stdout=subprocess.PIPE, text=True)
        time.sleep(1)
        rng = random.Random(n)
        lat = []
        deadline = time.time() + seconds - 2
        for k in range(100):
            lat.append(patch(admin, f"api-{rng.randrange(n)}", str(k)))
            if time.time() > deadline:
                break
        patched, _ = wrk.communicate()
        if "Non-2xx" in patched or "Socket errors" in patched:
            raise RuntimeError(f"{n} APIs: errors in the traffic run with PATCHes:\n{patched}")
        lat.sort()
        pct = lambda p: lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))]
        res = {"apis": n, "start_s": start, "idle_mib": idle, "traffic_mib": traffic, "stages_with_traffic": len(stages),
               "patches": len(lat), "patch_p50_ms": pct(50), "patch_p99_ms": pct(99), "patch_max_ms": lat[-1],
               "rps": reqs / seconds, "cpu_us": (c1 - c0) / reqs * 1e6,
               "one_rps": one_reqs / seconds, "one_cpu_us": one_cpu}
    finally:
        svc.stop()
    # nginx with the same routing: start time (to the last location answering) and idle memory.
    nport = h.free_port()
    nconf = h.write(f"{w}/scale-nginx-{n}.conf", nginx_config(w, nport, backend, n))
    t0 = time.time()
    nsvc = h.Service(f"scale-nginx-{n}", ["nginx", "-c", nconf, "-p", w], w)
    try:
        wait_until_serving(f"http://127.0.0.1:{nport}/api-{n - 1}/prod/r9/1", 120)
        res["nginx_start_s"] = time.time() - t0
        time.sleep(3)
        res["nginx_idle_mib"] = nsvc.rss_mib()
    finally:
        nsvc.stop()
    print(f"  {n:>6} APIs: start {res['start_s']:.2f} s, idle {res['idle_mib']:.0f} MiB, "
          f"with traffic on {res['stages_with_traffic']} stages {res['traffic_mib']:.0f} MiB, "
          f"PATCH p50 {res['patch_p50_ms']:.1f} / p99 {res['patch_p99_ms']:.1f} ms ({res['patches']}), "
          f"{res['rps']:.0f} req/s at {res['cpu_us']:.1f} µs CPU/request (one stage: {res['one_rps']:.0f} req/s at "
          f"{res['one_cpu_us']:.1f} µs); "
          f"nginx: start {res['nginx_start_s']:.2f} s, idle {res['nginx_idle_mib']:.0f} MiB", flush=True)
    return res


def run(h, args, work):
    """Measures every size; returns the results (a list, smallest first)."""
    sizes = [1, 100] if args.quick else [1, 100, 1000, 10000]
    seconds = 4 if args.quick else 20
    backend = h.free_port()
    conf = h.write(f"{work}/scale-backend.conf", h.backend_conf(work, backend, h.free_port()))
    b = h.Service("scale-backend", ["nginx", "-c", conf, "-p", work], work)
    try:
        h.wait_http(f"http://127.0.0.1:{backend}/x", "the backend")
        return [one_size(h, args, work, backend, n, seconds) for n in sizes]
    finally:
        b.stop()


def verdicts(rows):
    by = {r["apis"]: r for r in rows}
    if 10000 not in by or 1 not in by:
        return []
    r, one = by[10000], by[1]
    cpu = r["one_cpu_us"] / one["one_cpu_us"] - 1
    checks = [
        ("start ≤ 10 s", r["start_s"] <= 10, f"{r['start_s']:.2f} s"),
        ("idle resident memory ≤ 512 MiB", r["idle_mib"] <= 512, f"{r['idle_mib']:.0f} MiB"),
        (f"≤ 1 GiB with traffic on {r['stages_with_traffic']} stages", r["traffic_mib"] <= 1024, f"{r['traffic_mib']:.0f} MiB"),
        ("PATCH p99 ≤ 50 ms while serving", r["patch_p99_ms"] <= 50, f"{r['patch_p99_ms']:.1f} ms"),
        ("CPU per request within 5% of 1 API (traffic to one stage)", cpu <= 0.05,
         f"{cpu * 100:+.1f}% ({r['one_cpu_us']:.2f} against {one['one_cpu_us']:.2f} µs)"),
    ]
    return checks


def section(rows, cmdline, chart_name, env=None):
    out = [SCALE_BEGIN, "## Scale: cost against the size of the configuration", "",
           f"`{cmdline}` — APIs of 10 routes and one stage each, 10% of the stages with a canary at 10%, one "
           "backend (nginx `return 200`); canarygate with one gateway worker. *start*: spawn to the last API "
           "answering (the config file is seeded as one change); *idle*: VmRSS 15 s later; *with traffic*: "
           "after 20 s of wrk (32 connections) over 1% of the stages (at least one), a random stage and route "
           "per request, with the requests/s and canarygate's CPU µs per request of that run (and of a run "
           "to one stage only, as with 1 API: what the size of the configuration costs a request); *PATCH*: 100 "
           "PATCHes of a random stage's variable, one after the other, during 20 s more of the same traffic "
           "(p99 of 100 is the second-largest). nginx: the same routes as `location`s (10 per API) with a "
           "`split_clients` per canary stage, one worker; idle 3 s after it answers." + (
               f" Measured {env['time']} at `{env['rev']}` on {env['machine']}." if env else ""), "",
           "| APIs | start | idle | with traffic | PATCH p50 / p99 | one stage: requests/s, CPU µs/request | 1% of stages: requests/s, CPU µs/request | nginx start | nginx idle |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['apis']:,} | {r['start_s']:.2f} s | {r['idle_mib']:.0f} MiB | {r['traffic_mib']:.0f} MiB "
                   f"({r['stages_with_traffic']} stage{'s' if r['stages_with_traffic'] != 1 else ''}) | {r['patch_p50_ms']:.1f} / {r['patch_p99_ms']:.1f} ms | "
                   f"{r['one_rps']:,.0f}, {r['one_cpu_us']:.2f} | {r['rps']:,.0f}, {r['cpu_us']:.2f} | "
                   f"{r['nginx_start_s']:.2f} s | {r['nginx_idle_mib']:.0f} MiB |")
    checks = verdicts(rows)
    if checks:
        out += ["", "Targets at 10,000 APIs (issue 14):", ""]
        for name, passed, value in checks:
            out.append(f"- {name}: {value} — {'met' if passed else 'MISSED'}")
    if checks:
        out += ["", "nginx keeps its whole configuration in memory per worker and parses it at start (100,000 "
                "`location`s at 10,000 APIs); canarygate compiles each API's routes into one router and keeps "
                "per-second metrics only for windows with requests."]
    if chart_name:
        out += ["", f"![scale]({chart_name})"]
    out.append(SCALE_END)
    return "\n".join(out) + "\n"


def chart(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    xs = [r["apis"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ax = axes[0]
    ax.plot(xs, [r["idle_mib"] for r in rows], "o-", label="canarygate idle")
    ax.plot(xs, [r["traffic_mib"] for r in rows], "o-", label="canarygate, 1% of stages with traffic")
    ax.plot(xs, [r["nginx_idle_mib"] for r in rows], "s--", label="nginx idle")
    ax.set_title("resident memory (MiB)")
    ax2 = axes[1]
    ax2.plot(xs, [r["start_s"] for r in rows], "o-", label="canarygate")
    ax2.plot(xs, [r["nginx_start_s"] for r in rows], "s--", label="nginx")
    ax2.set_title("start to serving (s)")
    ax3 = axes[2]
    ax3.plot(xs, [r["patch_p99_ms"] for r in rows], "o-", label="PATCH p99 (ms)")
    ax3.plot(xs, [r["one_cpu_us"] for r in rows], "^-", label="CPU µs/request, one stage")
    ax3.plot(xs, [r["cpu_us"] for r in rows], "v-", label="CPU µs/request, 1% of stages")
    ax3.set_title("under load")
    for a in axes:
        a.set_xscale("log")
        a.set_xlabel("APIs (10 routes, 1 stage each)")
        a.legend(fontsize=8)
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)



def median(xs):
    return statistics.median(xs)
