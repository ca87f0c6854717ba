"""The cluster group of the benchmark (`bash bench/run --only cluster`): three canarygate replicas on one
PostgreSQL server (Debian's package, started here with initdb/pg_ctl on a free port, as the postgres user
when run as root), each with one gateway worker, to an nginx backend:

  propagation  200 changes (the canary's percentTraffic toggled between 0 and 100 through replica 1);
               for each, the time from the PATCH's answer to the moment every replica's gateway serves
               the new variant (each replica polled by its own thread, a keep-alive request every ~1 ms);
               p50 and p99
  failover     a rollout (TimeBasedLinear 10% every 2 s) under way; the leader is SIGKILLed; the time to
               the lease held by another replica (GET /v1/cluster) and to the rollout's record written
               by the new leader; leaseSeconds 3 and 10, 3 runs each
  large        propagation with 10,000 APIs (bench/scale.py's configuration: 10 routes and a stage each):
               two replicas, 50 PATCHes of a random stage's variable through replica 1, each timed until
               replica 2's admin API shows it (replicas apply each other's logged changes)
  reaction     bench/src/bin/reaction-time.rs with REACTION_STORE: three replicas (leaseSeconds 3), load
               and a rollout to a canary failing 3 of 10 requests sent through a replica that is not the
               leader; from the canary's first failing request until that replica's stage has no canary
  cpu          CPU per request of one replica on PostgreSQL (the only replica, so also the leader: it
               publishes its metrics every second and reads the cluster's back) against one process on
               SQLite, same config and backend, canary at 10%, one gateway worker each; wrk, interleaved

Imported by harness.py; results go into a marked section of docs/BENCHMARKS.md (kept by full runs of
the other groups).
"""

import glob
import http.client
import json
import os
import signal
import statistics
import subprocess
import threading
import time
import urllib.request

BEGIN, END = "<!-- cluster:begin -->", "<!-- cluster:end -->"


def pg_bin():
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    if not dirs:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    return dirs[-1]


def as_postgres(argv):
    return (["runuser", "-u", "postgres", "--"] + argv) if os.getuid() == 0 else argv


class Postgres:
    def __init__(self, h, work):
        self.bin = pg_bin()
        self.dir = os.path.join(work, "pg")
        os.makedirs(self.dir)
        if os.getuid() == 0:
            subprocess.run(["chown", "-R", "postgres:postgres", self.dir], check=True)
        subprocess.run(as_postgres([f"{self.bin}/initdb", "-D", f"{self.dir}/data", "-A", "trust", "-U", "postgres",
                                    "--no-sync"]), check=True, capture_output=True)
        self.port = h.free_port()
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=100"
        subprocess.run(as_postgres([f"{self.bin}/pg_ctl", "-D", f"{self.dir}/data", "-w", "-o", opts, "-l",
                                    f"{self.dir}/postgres.log", "start"]), check=True, capture_output=True)
        subprocess.run([f"{self.bin}/createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "canarygate"],
                       check=True, capture_output=True)
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/canarygate"

    def stop(self):
        subprocess.run(as_postgres([f"{self.bin}/pg_ctl", "-D", f"{self.dir}/data", "-m", "immediate", "stop"]),
                       capture_output=True)


def call(url, method="GET", body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"null")


def wait_ready(admin):
    """Waits (up to 30 s) until the admin listener answers /readyz."""
    deadline = time.time() + 30
    while True:
        try:
            call(f"{admin}/readyz")
            return
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)


class Replica:
    def __init__(self, h, args, work, pg, name, lease, env):
        self.name = name
        self.port, self.admin_port = h.free_port(), h.free_port()
        conf = h.write(f"{work}/{name}.yaml", f"""server:
  listen: 127.0.0.1:{self.port}
  adminListen: 127.0.0.1:{self.admin_port}
  dataDir: {work}/{name}-data
  store: {pg.url}
  replicaName: {name}
  leaseSeconds: {lease}
  workers: 1
  accessLog: {{enabled: false}}
""")
        self.service = h.Service(name, [args.bin, "serve", "--config", conf], work, env=env)
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.gateway = f"http://127.0.0.1:{self.port}"
        wait_ready(self.admin)


def setup(admin, prod, canary=None):
    """API `bench`, stage `prod` on the production backend; with `canary`, a canary at 0% on it."""
    call(f"{admin}/v1/apis/bench", "PUT", {"routes": [{"path": "/{proxy+}", "integration": {
        "type": "http", "uri": "http://${stageVariables.backend}/{proxy}"}}]})
    d1 = call(f"{admin}/v1/apis/bench/deployments", "POST", {})
    stage = {"deploymentId": d1["id"], "variables": {"backend": f"127.0.0.1:{prod}"}}
    if canary:
        stage["canarySettings"] = {"percentTraffic": 0, "stageVariableOverrides": {"backend": f"127.0.0.1:{canary}"}}
    call(f"{admin}/v1/apis/bench/stages/prod", "PUT", stage)
    return d1


def variant_of(conn):
    conn.request("GET", "/bench/prod/x")
    r = conn.getresponse()
    r.read()
    return r.getheader("x-canarygate-variant")


def propagation(replicas, n):
    """n changes through replicas[0]; seconds until every replica serves each."""
    admin = replicas[0].admin
    call(f"{admin}/v1/apis/bench/stages/prod", "PATCH", {"patchOperations": [
        {"op": "replace", "path": "/canarySettings/percentTraffic", "value": "0"}]})
    delays = []
    for i in range(n):
        want = "canary" if i % 2 == 0 else "production"
        pct = "100" if want == "canary" else "0"
        seen = {}
        done = threading.Event()
        start = [None]
        lock = threading.Lock()

        def poll(r):
            host, port = "127.0.0.1", r.port
            c = http.client.HTTPConnection(host, port, timeout=5)
            while not done.is_set():
                v = variant_of(c)
                t = time.monotonic()
                if start[0] is not None and v == want:
                    with lock:
                        seen.setdefault(r.name, t)
                        if len(seen) == len(replicas):
                            done.set()
                    return
                time.sleep(0.001)

        threads = [threading.Thread(target=poll, args=(r,)) for r in replicas]
        call(f"{admin}/v1/apis/bench/stages/prod", "PATCH", {"patchOperations": [
            {"op": "replace", "path": "/canarySettings/percentTraffic", "value": pct}]})
        start[0] = time.monotonic()
        for t in threads:
            t.start()
        if not done.wait(30):
            raise RuntimeError(f"change {i} not served by every replica within 30 s: {seen}")
        for t in threads:
            t.join()
        delays.append(max(seen.values()) - start[0])
    return delays


def failover(h, args, work, prod, canary, lease, env, run):
    pg = Postgres(h, os.path.join(work, f"fo-{lease}-{run}"))
    replicas = []
    try:
        sub = os.path.join(work, f"fo-{lease}-{run}")
        replicas = [Replica(h, args, sub, pg, f"r{i}", lease, env) for i in (1, 2, 3)]
        admin = replicas[0].admin
        setup(admin, prod)
        d2 = call(f"{admin}/v1/apis/bench/deployments", "POST", {})
        call(f"{admin}/v1/deployment-configs/Linear10", "PUT", {"type": "TimeBasedLinear", "percentage": 10, "intervalSeconds": 2})
        while not call(f"{admin}/v1/cluster").get("leader"):
            time.sleep(0.05)
        r = call(f"{admin}/v1/apis/bench/stages/prod/rollouts", "POST", {
            "deploymentId": d2["id"], "stageVariableOverrides": {"backend": f"127.0.0.1:{canary}"}, "deploymentConfig": "Linear10"})
        rid = r["id"]
        while call(f"{admin}/v1/rollouts/{rid}").get("weight", 0) < 10:
            time.sleep(0.05)
        time.sleep(0.5 + run * 0.4)  # at different points of a step
        leader = call(f"{admin}/v1/cluster")["leader"]
        dead = next(x for x in replicas if x.name == leader)
        survivor = next(x for x in replicas if x.name != leader)
        before = call(f"{survivor.admin}/v1/rollouts/{rid}")["updatedAt"]
        t0 = time.monotonic()
        os.kill(dead.service.proc.pid, signal.SIGKILL)
        dead.service.proc.wait()
        took = written = None
        while written is None:
            now = time.monotonic() - t0
            if now > 60:
                raise RuntimeError("no replica took over within 60 s")
            if took is None and call(f"{survivor.admin}/v1/cluster").get("leader") not in (None, leader):
                took = now
            if took is not None and call(f"{survivor.admin}/v1/rollouts/{rid}")["updatedAt"] != before:
                written = time.monotonic() - t0
            time.sleep(0.01)
        return {"lease": lease, "takeover_s": took, "first_write_s": written}
    finally:
        for r in replicas:
            r.service.stop()
        pg.stop()


def reaction(h, args, work, env):
    pg = Postgres(h, os.path.join(work, "reaction"))
    try:
        renv = dict(env, CANARYGATE_BIN=args.bin, REACTION_RUNS=str(2 if args.quick else 10), REACTION_STORE=pg.url)
        p = subprocess.run([args.reaction_bin], env=renv, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"reaction-time (3 replicas) failed:\n{p.stdout}\n{p.stderr}")
        print("\n".join("  " + line for line in p.stdout.splitlines() if not line.startswith("{")), flush=True)
        return json.loads([line for line in p.stdout.splitlines() if line.startswith("{")][-1])["reaction_ms"]
    finally:
        pg.stop()


def cpu(h, args, work, pg_replica, prod, canary, env):
    """The PostgreSQL replica (alone) against a SQLite process: CPU per request, interleaved."""
    port, admin_port = h.free_port(), h.free_port()
    conf = h.write(f"{work}/sqlite.yaml", f"""server:
  listen: 127.0.0.1:{port}
  adminListen: 127.0.0.1:{admin_port}
  dataDir: {work}/sqlite-data
  workers: 1
  accessLog: {{enabled: false}}
""")
    svc = h.Service("sqlite", [args.bin, "serve", "--config", conf], work, env=env)
    try:
        admin = f"http://127.0.0.1:{admin_port}"
        wait_ready(admin)
        setup(admin, prod, canary)
        for a in (admin, pg_replica.admin):
            call(f"{a}/v1/apis/bench/stages/prod", "PATCH", {"patchOperations": [
                {"op": "replace", "path": "/canarySettings/percentTraffic", "value": "10"}]})
        targets = [h.Target("sqlite", "canarygate, SQLite store", svc, f"http://127.0.0.1:{port}/bench/prod/x"),
                   h.Target("postgres", "canarygate, PostgreSQL store (sole replica)", pg_replica.service,
                            f"{pg_replica.gateway}/bench/prod/x")]
        return h.interleaved(targets, args.reps, args.duration, args.warmup, args.conns, lambda t: t.url)
    finally:
        svc.stop()


def large(h, args, work, prod, env):
    import random
    import scale
    n = 1000 if args.quick else 10000
    sub = os.path.join(work, "large")
    pg = Postgres(h, sub)
    services = []
    try:
        ports = [(h.free_port(), h.free_port()) for _ in range(2)]
        for i, (p, a) in enumerate(ports):
            conf = scale.canarygate_config(sub, p, a, prod, n).replace(
                "server:\n", f"server:\n  store: {pg.url}\n  replicaName: large-{i}\n", 1).replace(
                f"dataDir: {sub}/scale-{n}-data", f"dataDir: {sub}/large-{i}-data")
            path = h.write(f"{sub}/large-{i}.yaml", conf)
            services.append(h.Service(f"large-{i}", [args.bin, "serve", "--config", path], sub, env=env))
            wait_ready(f"http://127.0.0.1:{a}")
        delays = []
        for k in range(10 if args.quick else 50):
            api = f"api-{random.randrange(n)}"
            scale.patch(ports[0][1], api, f"v{k}")
            t0 = time.monotonic()
            while call(f"http://127.0.0.1:{ports[1][1]}/v1/apis/{api}/stages/prod")["variables"].get("x") != f"v{k}":
                if time.monotonic() - t0 > 30:
                    raise RuntimeError(f"{api}: change not on replica 2 within 30 s")
                time.sleep(0.001)
            delays.append(time.monotonic() - t0)
        print(f"  propagation with {n} APIs over {len(delays)} changes: p50 {statistics.median(delays) * 1000:.1f} ms, "
              f"max {max(delays) * 1000:.1f} ms", flush=True)
        return {"apis": n, "propagation_s": delays}
    finally:
        for s in services:
            s.stop()
        pg.stop()


def run(h, args, work):
    services = []
    env = dict(os.environ, CANARYGATE_WORKER_THREADS="1", CANARYGATE_LOG="warn")
    env.pop("CANARYGATE_GATEWAY_WORKERS", None)
    prod, canary = h.free_port(), h.free_port()
    conf = h.write(f"{work}/c-backend.conf", h.backend_conf(work, prod, canary).replace("backend.pid", "c-backend.pid")
                   .replace("backend.error.log", "c-backend.error.log"))
    backend = h.Service("c-backend", ["nginx", "-c", conf, "-p", work], work)
    services.append(backend)
    pg = None
    try:
        pg = Postgres(h, work)
        replicas = [Replica(h, args, work, pg, f"replica-{i}", 10, env) for i in (1, 2, 3)]
        services += [r.service for r in replicas]
        setup(replicas[0].admin, prod, canary)
        n = 20 if args.quick else 200
        delays = propagation(replicas, n)
        print(f"  propagation over {n} changes: p50 {statistics.median(delays) * 1000:.1f} ms, "
              f"p99 {sorted(delays)[int(0.99 * (len(delays) - 1))] * 1000:.1f} ms, max {max(delays) * 1000:.1f} ms", flush=True)
        # The CPU comparison on replica 1 alone (it becomes the leader once the others stop).
        for r in replicas[1:]:
            r.service.stop()
        while call(f"{replicas[0].admin}/v1/cluster").get("leader") != replicas[0].name:
            time.sleep(0.1)
        cpu_runs = cpu(h, args, work, replicas[0], prod, canary, env)
        replicas[0].service.stop()
        reaction_ms = reaction(h, args, work, env)
        big = large(h, args, work, prod, env)
        runs = []
        for lease in ((3,) if args.quick else (3, 10)):
            for i in range(1 if args.quick else 3):
                f = failover(h, args, work, prod, canary, lease, env, i)
                print(f"  failover, leaseSeconds {lease}, run {i + 1}: lease taken over after {f['takeover_s']:.2f} s, "
                      f"the rollout's record written by the new leader after {f['first_write_s']:.2f} s", flush=True)
                runs.append(f)
        return {"propagation_s": delays, "failover": runs, "reaction_ms": reaction_ms, "cpu": cpu_runs, "large": big}
    finally:
        for s in reversed(services):
            s.stop()
        if pg:
            pg.stop()


def section(res, cmdline, env=None):
    d = sorted(res["propagation_s"])
    p = lambda q: d[int(q * (len(d) - 1))] * 1000
    out = [BEGIN, "## Several replicas on PostgreSQL", "",
           f"`{cmdline}` — three replicas (one gateway worker each) on one local PostgreSQL "
           f"({os.path.basename(os.path.dirname(pg_bin()))}), nginx backend. *Propagation*: {len(d)} changes of the "
           "canary's percentTraffic through replica 1, each timed from the PATCH's answer until every "
           "replica's gateway serves it (each polled every ~1 ms). *Failover*: a rollout under way, the "
           "leader SIGKILLed; time to another replica holding the lease (`GET /v1/cluster`) and to the "
           "rollout's record written by it." + (f" Measured {env['time']} at `{env['rev']}` on {env['machine']}." if env else ""), "",
           "| | p50 | p99 | max | target |", "|---|---|---|---|---|",
           f"| propagation to all 3 replicas | {p(0.5):.1f} ms | {p(0.99):.1f} ms | {d[-1] * 1000:.1f} ms | p99 ≤ 1 s — "
           f"{'met' if p(0.99) <= 1000 else 'MISSED'} |", "",
           "| leaseSeconds | run | lease taken over | record written by the new leader | target (lease + 2 s) |",
           "|---|---|---|---|---|"]
    for i, f in enumerate(res["failover"]):
        target = f["lease"] + 2
        out.append(f"| {f['lease']} | {i % 3 + 1} | {f['takeover_s']:.2f} s | {f['first_write_s']:.2f} s | "
                   f"{'met' if f['first_write_s'] <= target else 'MISSED'} |")
    g = sorted(res["large"]["propagation_s"])
    out += ["", f"*Propagation with {res['large']['apis']:,} APIs* (10 routes and a stage each, as in the scale group): "
            f"two replicas, {len(g)} PATCHes of a random stage's variable through replica 1, each timed until "
            "replica 2's admin API shows it. Replicas apply each other's logged changes "
            "(`canarygate_changelog`); before it, each change meant loading the whole state: an ad-hoc run of the same steps on the build "
            "before (20 changes, a CI run sharing the machine) measured p50 368 ms, max 518 ms.", "",
            "| | p50 | p99 | max |", "|---|---|---|---|",
            f"| propagation, {res['large']['apis']:,} APIs | {statistics.median(g) * 1000:.1f} ms | "
            f"{g[int(0.99 * (len(g) - 1))] * 1000:.1f} ms | {g[-1] * 1000:.1f} ms |"]
    r = sorted(res["reaction_ms"])
    out += ["", "*Rollback reaction with 3 replicas*: `reaction-time` (as in the reaction group) on three "
            "replicas (leaseSeconds 3); the load and the rollout go through a replica that is not the leader, "
            "so the leader sees the canary's errors only in the seconds that replica publishes (once a "
            "second); timed from the canary's first failing request until that replica serves no canary.", "",
            "| runs | median | min | max | target |", "|---|---|---|---|---|",
            f"| {len(r)} | {statistics.median(r):.0f} ms | {r[0]:.0f} ms | {r[-1]:.0f} ms | ≤ 3 s — "
            f"{'met' if r[-1] <= 3000 else 'MISSED'} |", ""]
    c = res["cpu"]
    sq = statistics.median(x["cpu_us"] for x in c["sqlite"])
    pq = statistics.median(x["cpu_us"] for x in c["postgres"])
    ratios = [p["cpu_us"] / s["cpu_us"] for s, p in zip(c["sqlite"], c["postgres"])]
    out += ["*CPU per request, PostgreSQL mode against SQLite mode*: one replica on PostgreSQL (alone, so "
            "it is also the leader: it publishes its seconds and reads the cluster's back every second) and "
            "one process on SQLite, same routes, canary at 10%, one gateway worker each, wrk "
            f"({len(c['sqlite'])} interleaved rounds).", "",
            "| store | CPU µs/request (median) | requests/s (median) |", "|---|---|---|",
            f"| SQLite | {sq:.1f} | {statistics.median(x['rps'] for x in c['sqlite']):,.0f} |",
            f"| PostgreSQL | {pq:.1f} | {statistics.median(x['rps'] for x in c['postgres']):,.0f} |", "",
            f"PostgreSQL/SQLite per round: {', '.join(f'{x:.3f}' for x in ratios)}; median "
            f"{statistics.median(ratios):.3f} (target within 5% — "
            f"{'met' if statistics.median(ratios) <= 1.05 else 'MISSED'}).", END]
    return "\n".join(out) + "\n"
