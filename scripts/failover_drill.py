#!/usr/bin/env python3
"""The failover drill's driver: scripts/failover-drill.sh sets up PostgreSQL and the binary,
then runs this (standard library only). Prints one JSON object on stdout; progress on stderr.
"""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

BIN = os.environ["DRILL_BIN"]
DATABASE_URL = os.environ["DATABASE_URL"]
REPEATS = int(os.environ.get("DRILL_REPEATS", "5"))
WORKERS = int(os.environ.get("DRILL_WORKERS", "300"))
RATE = float(os.environ.get("DRILL_RATE", "4"))
LEASE = int(os.environ.get("DRILL_LEASE", "4"))
KINDS = os.environ.get(
    "DRILL_KINDS", "owner_kill,owner_stop,nats_leader_kill,rolling_restart"
).split(",")
CITIES = ["buenos-aires", "cordoba"]
SECRET = "drill-secret-" + "x" * 32
OUT = os.path.abspath("target/drill")
OWNER_STREAM = "KV_city_owner"
EVENTS_STREAM = "ARREGLAME_EVENTS"
# How long a fault may take to heal before it counts as a miss.
HEAL_WITHIN = 60.0
# The window after a fault in which the longest pause between new offers is its outage.
OUTAGE_WINDOW_MS = 30_000


def log(message):
    print(f"[drill {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def now_ms():
    return int(time.time() * 1000)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(check, within, what):
    deadline = time.time() + within
    while time.time() < deadline:
        if check():
            return True
        time.sleep(0.1)
    raise SystemExit(f"drill: {what} did not happen within {within:.0f} s")


def get(url, token=None, timeout=2.0):
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.read().decode()
    except Exception:
        return None


def get_json(url, token=None):
    text = get(url, token)
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def database(name):
    return DATABASE_URL.rsplit("/", 1)[0] + "/" + name


def psql(url, sql):
    done = subprocess.run(
        ["psql", url, "-Atqc", sql], check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def preferred(nodes, city):
    """The city's rank-0 node by rendezvous hashing, as `cluster::lease::rendezvous_rank`."""

    def weight(node):
        digest = hashlib.sha256(f"{node}\0{city}".encode()).digest()
        return int.from_bytes(digest[:8], "big")

    return max(nodes, key=weight)


def percentiles(values):
    if not values:
        return {"p50": None, "p95": None, "max": None, "n": 0}
    ordered = sorted(values)

    def at(q):
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]

    return {"p50": at(0.5), "p95": at(0.95), "max": ordered[-1], "n": len(ordered)}


def find_streams(value):
    """Every stream entry (a dict with `name` and `state`) anywhere in a /jsz answer."""
    if isinstance(value, dict):
        if "name" in value and isinstance(value.get("state"), dict):
            yield value
        for child in value.values():
            yield from find_streams(child)
    elif isinstance(value, list):
        for child in value:
            yield from find_streams(child)


class NatsServer:
    def __init__(self, index, routes):
        self.name = f"drill-nats-{index}"
        self.port, self.cluster_port, self.monitor_port = free_port(), free_port(), free_port()
        self.dir = os.path.join(OUT, self.name)
        self.routes = routes
        self.process = None

    @property
    def url(self):
        return f"nats://127.0.0.1:{self.port}"

    def start(self):
        log_file = open(os.path.join(OUT, f"{self.name}.log"), "a")
        self.process = subprocess.Popen(
            ["nats-server", "-n", self.name, "-a", "127.0.0.1", "-p", str(self.port),
             "-m", str(self.monitor_port), "-js", "-sd", self.dir,
             "--cluster_name", "drill", "--cluster", f"nats://127.0.0.1:{self.cluster_port}",
             "--routes", ",".join(self.routes)],
            stdout=log_file, stderr=subprocess.STDOUT)

    def jsz(self):
        return get_json(f"http://127.0.0.1:{self.monitor_port}/jsz?accounts=true&streams=true")

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def kill9(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


class Node:
    def __init__(self, index, nats_url, database_url):
        self.id = f"drill-node-{index}"
        self.port = free_port()
        self.nats_url = nats_url
        self.database_url = database_url
        self.process = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        env = dict(os.environ)
        for gone in ("LOG_FILE", "OTEL_EXPORTER_OTLP_ENDPOINT", "METRICS_TOKEN", "METRICS_ADDR"):
            env.pop(gone, None)
        env.update(DATABASE_URL=self.database_url, PORT=str(self.port), HOST="127.0.0.1",
                   JWT_SECRET=SECRET, LOG_LEVEL="info", ARREGLAME_CLUSTER="nats",
                   NATS_URL=self.nats_url, NODE_ID=self.id, CITY_LEASE_SECONDS=str(LEASE),
                   DATABASE_MAX_CONNECTIONS="10")
        log_file = open(os.path.join(OUT, f"{self.id}.log"), "a")
        self.process = subprocess.Popen([BIN, "serve"], env=env, stdout=log_file,
                                        stderr=subprocess.STDOUT)
        wait(lambda: get(self.url + "/health") is not None, 60, f"{self.id} healthy")

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def signal(self, sig):
        self.process.send_signal(sig)

    def cluster(self):
        return get_json(self.url + "/ops/cluster", OPS_TOKEN)

    def metric(self, name, city=None):
        """The sum of a counter's samples (those of `city` only, when given)."""
        text = get(self.url + "/metrics") or ""
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            if series.split("{")[0] != name:
                continue
            if city is not None and f'city="{city}"' not in series:
                continue
            total += float(value)
        return total

    def writes(self, city):
        return sum(self.metric(f"arreglame_offers_{kind}_total", city)
                   for kind in ("sent", "accepted", "rejected", "expired"))


class OfferLogs:
    """The simulators' --offer-log files: one line per new offer a worker received."""

    def __init__(self, paths):
        self.paths = paths
        self.offsets = {p: 0 for p in paths}
        self.rest = {p: "" for p in paths}
        self.by_city = {}

    def poll(self):
        for path in self.paths:
            if not os.path.exists(path):
                continue
            with open(path) as f:
                f.seek(self.offsets[path])
                chunk = f.read()
                self.offsets[path] = f.tell()
            lines = (self.rest[path] + chunk).split("\n")
            self.rest[path] = lines.pop()
            for line in lines:
                if line.strip():
                    entry = json.loads(line)
                    self.by_city.setdefault(entry["city"], []).append(entry["atMs"])

    def next_after(self, city, t0, within=HEAL_WITHIN):
        """Milliseconds from `t0` to the first new offer in `city` after it (None: a miss)."""
        deadline = time.time() + within
        while time.time() < deadline:
            self.poll()
            later = [at for at in self.by_city.get(city, []) if at > t0]
            if later:
                return min(later) - t0
            time.sleep(0.05)
        return None

    def longest_gap(self, city, t0, window_ms=OUTAGE_WINDOW_MS):
        """The longest pause between new offers in `city` from `t0` to `t0 + window_ms`
        (the fault itself counts as the first "offer")."""
        self.poll()
        times = sorted(at for at in self.by_city.get(city, []) if t0 < at <= t0 + window_ms)
        previous, gap = t0, 0
        for at in times + [t0 + window_ms]:
            gap = max(gap, at - previous)
            previous = at
        return gap


def main():
    global OPS_TOKEN
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    admin = database("postgres")
    db_name = "drill"
    psql(admin, f"drop database if exists {db_name}")
    psql(admin, f"create database {db_name}")
    db_url = database(db_name)
    env = dict(os.environ, DATABASE_URL=db_url, JWT_SECRET=SECRET)
    subprocess.run([BIN, "migrate"], env=env, check=True, capture_output=True)
    subprocess.run([BIN, "seed"], env=env, check=True, capture_output=True)
    # Offers that nobody answers (a worker whose node died) expire in 15 s, not 5 minutes.
    psql(db_url, "update system_config set value = '0.25' where key = 'worker_timeout_minutes'")
    OPS_TOKEN = subprocess.run(
        [BIN, "token", "--role", "ops", "--sub", str(uuid.uuid4()), "--ttl", "6h"],
        env=env, check=True, capture_output=True, text=True).stdout.strip()

    servers = [NatsServer(i, []) for i in (1, 2, 3)]
    routes = [f"nats://127.0.0.1:{s.cluster_port}" for s in servers]
    for s in servers:
        s.routes = routes
        s.start()
    wait(lambda: all(((s.jsz() or {}).get("meta_cluster") or {}).get("leader") for s in servers),
         60, "a JetStream meta leader on every NATS server")
    nats_url = ",".join(s.url for s in servers)
    log(f"NATS cluster up: {nats_url}")

    nodes = [Node(i, nats_url, db_url) for i in (1, 2, 3)]
    for n in nodes:
        n.start()
    log("3 engine nodes up: " + ", ".join(n.url for n in nodes))

    def view():
        for n in nodes:
            if n.alive():
                v = n.cluster()
                if v:
                    return v
        return None

    def claims(v):
        out = {}
        for node in v.get("nodes", []):
            for city in node.get("cities", []):
                out.setdefault(city, []).append(node["nodeId"])
        return out

    def settled():
        v = view()
        if not v:
            return False
        live = sorted(n["nodeId"] for n in v.get("nodes", []))
        if live != sorted(n.id for n in nodes):
            return False
        held = claims(v)
        return all(held.get(c["cityId"]) == [preferred(live, c["cityId"])]
                   for c in v.get("cities", []))

    def settle():
        """Every city back with its preferred node, and still so a lease later (a fault's
        effects can come late: leases lapse a lease after a NATS server died)."""
        time.sleep(LEASE)
        while True:
            wait(settled, 180, "every city with its preferred node")
            time.sleep(LEASE)
            if settled():
                return

    def owner_of(city):
        wait(lambda: len(claims(view() or {}).get(city, [])) == 1, 60, f"an owner for {city}")
        owner_id = claims(view())[city][0]
        return next(n for n in nodes if n.id == owner_id)

    settle()
    log("every city owned by its preferred node")

    sims = []
    for i, city in enumerate(CITIES):
        offer_log = os.path.join(OUT, f"offers-{city}.jsonl")
        out = open(os.path.join(OUT, f"sim-{city}.json"), "w")
        err = open(os.path.join(OUT, f"sim-{city}.log"), "w")
        sim = subprocess.Popen(
            [BIN, "simulate", "--url", ",".join(n.url for n in nodes), "--city", city,
             "--workers", str(WORKERS // len(CITIES)), "--customers", "40",
             "--duration", "6h", "--warmup", "0s", "--rate", str(RATE),
             "--accept-rate", "0.9", "--cancel-rate", "0.02", "--job-seconds", "5",
             "--drain-seconds", "60", "--seed", str(i + 1), "--offer-log", offer_log,
             "--json", "--check"],
            env=env, stdout=out, stderr=err)
        sims.append((city, sim, out.name, offer_log))
    offers = OfferLogs([s[3] for s in sims])
    for city in CITIES:
        offers.next_after(city, now_ms() - 1, within=120) is not None or sys.exit(
            f"drill: no offer in {city} after the simulator started")
    log("simulators running: offers flowing in both cities")

    takeovers = {kind: [] for kind in KINDS}
    misses = {kind: 0 for kind in KINDS}
    # (kind, cities it hit, when): the outage of each is read at the end.
    faults = []
    refused_total = 0.0
    accepted_stale = 0.0

    def record(kind, ms, what):
        if ms is None:
            misses[kind] += 1
            log(f"{kind}: {what}: no new offer within {HEAL_WITHIN:.0f} s")
        else:
            takeovers[kind].append(ms)
            log(f"{kind}: {what}: next offer after {ms} ms")

    def bank_counters(node):
        """A node about to die takes its counters with it: keep them."""
        nonlocal refused_total
        refused_total += node.metric("arreglame_cluster_stale_writes_refused_total")

    for kind in KINDS:
        for rep in range(REPEATS):
            city = CITIES[rep % len(CITIES)]
            if kind == "owner_kill":
                owner = owner_of(city)
                bank_counters(owner)
                t0 = now_ms()
                faults.append((kind, [city], t0))
                owner.signal(signal.SIGKILL)
                owner.process.wait()
                record(kind, offers.next_after(city, t0), f"kill -9 {owner.id} ({city})")
                owner.start()
            elif kind == "owner_stop":
                owner = owner_of(city)
                writes_before = owner.writes(city)
                refused_before = owner.metric("arreglame_cluster_stale_writes_refused_total")
                t0 = now_ms()
                faults.append((kind, [city], t0))
                owner.signal(signal.SIGSTOP)
                ms = offers.next_after(city, t0, within=2 * LEASE + HEAL_WITHIN)
                time.sleep(max(0.0, t0 / 1000 + 2 * LEASE - time.time()))
                owner.signal(signal.SIGCONT)
                # It gives the city up at its first tick; before the preferred node gets it
                # back (two leases of being seen again), every write it made is a stale one.
                time.sleep(LEASE / 2)
                accepted = owner.writes(city) - writes_before
                refused = owner.metric("arreglame_cluster_stale_writes_refused_total") - refused_before
                accepted_stale += accepted
                record(kind, ms, f"SIGSTOP {owner.id} ({city}) for {2 * LEASE} s: "
                                 f"{accepted:.0f} writes accepted, {refused:.0f} refused after waking")
            elif kind == "nats_leader_kill":
                leader = None
                for s in servers:
                    for stream in find_streams(s.jsz() or {}):
                        if stream["name"] == OWNER_STREAM:
                            leader = (stream.get("cluster") or {}).get("leader") or leader
                victim = next((s for s in servers if s.name == leader), servers[rep % 3])
                t0 = now_ms()
                faults.append((kind, CITIES, t0))
                victim.kill9()
                worst = None
                for c in CITIES:
                    ms = offers.next_after(c, t0)
                    worst = None if ms is None else max(worst or 0, ms)
                record(kind, worst, f"kill -9 {victim.name} (leader of {OWNER_STREAM}: {leader})")
                victim.start()
                wait(lambda: (victim.jsz() or {}).get("meta_cluster", {}).get("leader"), 60,
                     f"{victim.name} back in the JetStream cluster")
            elif kind == "rolling_restart":
                for node in nodes:
                    held = [c for c in CITIES if owner_of(c) is node]
                    bank_counters(node)
                    t0 = now_ms()
                    if held:
                        faults.append((kind, held, t0))
                    node.signal(signal.SIGTERM)
                    node.process.wait(timeout=60)
                    for c in held:
                        record(kind, offers.next_after(c, t0), f"SIGTERM {node.id} ({c})")
                    node.start()
                    settle()
            settle()

    if faults:
        time.sleep(max(0.0, (faults[-1][2] + OUTAGE_WINDOW_MS) / 1000 - time.time()))
    outages = {kind: [] for kind in KINDS}
    for kind, hit, t0 in faults:
        outages[kind].append(max(offers.longest_gap(c, t0) for c in hit))
    log("faults done; letting the simulators drain")
    for _, sim, _, _ in sims:
        sim.send_signal(signal.SIGINT)
    summaries = {}
    for city, sim, out_path, _ in sims:
        sim.wait(timeout=600)
        with open(out_path) as f:
            text = f.read().strip()
        summaries[city] = json.loads(text) if text else {"error": f"no summary (exit {sim.returncode})"}

    # Every outbox row is on the stream once (the relays de-duplicate by message id).
    outbox_rows = int(psql(db_url, "select count(*) from outbox_events"))

    def stream_messages():
        for s in servers:
            for stream in find_streams(s.jsz() or {}):
                if stream["name"] == EVENTS_STREAM:
                    return stream["state"].get("messages", 0)
        return None

    deadline = time.time() + 120
    while time.time() < deadline and stream_messages() != outbox_rows:
        time.sleep(0.5)
        outbox_rows = int(psql(db_url, "select count(*) from outbox_events"))
    messages = stream_messages()
    for n in nodes:
        if n.alive():
            refused_total += n.metric("arreglame_cluster_stale_writes_refused_total")

    checks = [s.get("check", {}) for s in summaries.values()]
    result = {
        "repeats": REPEATS,
        "lease_seconds": LEASE,
        "workers": WORKERS,
        "rate_per_city": RATE,
        "faults": {
            kind: {
                "takeover_ms": percentiles(takeovers[kind]),
                "missed": misses[kind],
                # The longest pause between new offers in the city within 30 s of the
                # fault: when offers went on at first and stopped later (a NATS server
                # lost), this is the outage, not takeover_ms.
                "outage_ms": percentiles(outages[kind]),
            }
            for kind in KINDS
        },
        "lost": sum(s.get("lost", 0) for s in summaries.values()),
        "double_assigned": sum(c.get("double_accepted", 0) for c in checks),
        "stale_writes_refused": int(refused_total),
        "stale_writes_accepted": int(accepted_stale),
        "outbox_rows": outbox_rows,
        "stream_messages": messages,
        "check_ok": all(c.get("ok", False) for c in checks),
        "simulators": summaries,
    }
    print(json.dumps(result))

    for n in nodes:
        if n.alive():
            n.signal(signal.SIGTERM)
    for n in nodes:
        if n.process:
            try:
                n.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                n.signal(signal.SIGKILL)
    for s in servers:
        if s.alive():
            s.kill9()


OPS_TOKEN = None
# Every process the drill started, stopped whatever way the drill ends.
CHILDREN = []
_popen = subprocess.Popen


def _tracked(*args, **kwargs):
    process = _popen(*args, **kwargs)
    CHILDREN.append(process)
    return process


if __name__ == "__main__":
    subprocess.Popen = _tracked
    try:
        main()
    finally:
        for child in CHILDREN:
            if child.poll() is None:
                child.send_signal(signal.SIGCONT)
                child.kill()
