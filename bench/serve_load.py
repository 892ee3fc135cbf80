#!/usr/bin/env python
"""Load on the speaker service (issue 28 §4): N concurrent clients on the loopback address for a
bounded time, verify and identify mixed, on real recordings; throughput, latency percentiles,
errors by status, and the server's memory (its own process and its model workers).

It starts `scripts/serve.py` on a fresh SQLite database in a temp folder (or --database), makes an
admin key, enrols the held-out speechocean762 speakers of scripts/pretrained_heldout.txt (3
recordings each, 8 kHz FLAC, 2-6 s) and then, for each --clients level in turn, runs that many
clients for --seconds. Each client sends one request at a time, at once after the answer: with
--verify_share of them `POST /v1/verify` (a held-out recording against an enrolled speaker, its
own half of the time), the rest `POST /v1/identify` (top_k 3). A 503 is a refusal, not a failure:
the client waits its Retry-After (capped at --retry_cap seconds) and carries on, as a polite client
does. Latency percentiles are of the answered (2xx) requests; refusals are counted by status.

The server admits `workers + queue_size` model requests at once: up to that many clients (one
request each) it is below saturation and every request should be answered (goal: 0 errors); above
it the extra requests get 503 with Retry-After, at once, and never 500. RSS is sampled every 0.5 s
(the server and every process of its group) and printed per --rss_every seconds, so a long run
shows whether it stays flat (goal: flat over 5 minutes).

    python bench/serve_load.py                                    # 2 workers, queue 2: 2 and 12 clients, 30 s each
    python bench/serve_load.py --clients 4 --seconds 300          # the 5-minute run at saturation's edge
    python bench/serve_load.py --workers 1 --queue_size 0 --clients 1 8 --json out.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

HELDOUT_LIST = REPO / "scripts" / "pretrained_heldout.txt"
ENROLLED_FILES = 3


def heldout_recordings(data: Path, speakers: int, queries: int) -> dict[str, tuple[list[Path], list[Path]]]:
    """{speaker: (recordings to enrol, recordings to query)} of the first `speakers` held-out
    speechocean762 speakers with enough files."""
    names = [line.split()[1] for line in HELDOUT_LIST.read_text().splitlines()
             if line.startswith("speechocean762 ")]
    chosen = {}
    for name in names:
        files = sorted((data / "speechocean762" / name).glob("*.flac"))
        if len(files) >= ENROLLED_FILES + queries:
            chosen[name] = (files[:ENROLLED_FILES], files[ENROLLED_FILES:ENROLLED_FILES + queries])
        if len(chosen) == speakers:
            return chosen
    raise SystemExit(f"error: {data / 'speechocean762'}: fewer than {speakers} held-out speakers with "
                     f"{ENROLLED_FILES + queries} recordings")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the server's memory ------------------------------------------------------------------------

def group_rss_mib(group: int) -> tuple[float, int]:
    """Resident memory (MiB) of every live process of a process group, and how many there are."""
    total, count = 0, 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            fields = text[text.rindex(")") + 2:].split()
            if int(fields[2]) != group or fields[0] == "Z":
                continue
            status = (stat.parent / "status").read_text()
        except (OSError, ValueError):
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
                count += 1
    return total / 1024, count


class RssSampler:
    def __init__(self, group: int):
        self.group = group
        self.samples: list[tuple[float, float, int]] = []  # (time, MiB, processes)

    async def run(self, stop: asyncio.Event, every: float = 0.5) -> None:
        while not stop.is_set():
            rss, count = group_rss_mib(self.group)
            self.samples.append((time.monotonic(), rss, count))
            try:
                await asyncio.wait_for(stop.wait(), every)
            except asyncio.TimeoutError:
                pass

    def between(self, start: float, end: float) -> list[float]:
        return [rss for t, rss, _ in self.samples if start <= t <= end]


# --- the clients --------------------------------------------------------------------------------

class Tally:
    def __init__(self):
        self.latencies: dict[str, list[float]] = {"verify": [], "identify": []}
        self.statuses: Counter = Counter()
        self.refused_latencies: list[float] = []
        self.identified = Counter()  # right, wrong (top-1 of the answered identify requests)

    def percentiles(self, kind: str | None = None) -> tuple[float, float, float]:
        values = sum(self.latencies.values(), []) if kind is None else self.latencies[kind]
        if not values:
            return (float("nan"),) * 3
        return tuple(float(x) * 1000 for x in np.percentile(values, [50, 95, 99]))


async def client(http: httpx.AsyncClient, queries, speakers: list[str], verify_share: float, deadline: float,
                 tally: Tally, rng: random.Random, retry_cap: float) -> None:
    while time.monotonic() < deadline:
        speaker, name, audio = rng.choice(queries)
        if rng.random() < verify_share:
            kind = "verify"
            claimed = speaker if rng.random() < 0.5 else rng.choice(speakers)
            request = dict(url="/v1/verify", files={"file": (name, audio, "audio/flac")}, data={"speaker": claimed})
        else:
            kind = "identify"
            request = dict(url="/v1/identify", files={"file": (name, audio, "audio/flac")}, data={"top_k": "3"})
        started = time.monotonic()
        try:
            answer = await http.post(**request)
        except httpx.TimeoutException:
            tally.statuses["timeout"] += 1
            continue
        except httpx.HTTPError as error:
            tally.statuses[type(error).__name__] += 1
            await asyncio.sleep(0.5)
            continue
        took = time.monotonic() - started
        tally.statuses[answer.status_code] += 1
        if answer.is_success:
            tally.latencies[kind].append(took)
            if kind == "identify":
                tally.identified["right" if answer.json()["speaker"] == speaker else "wrong"] += 1
        elif answer.status_code == 503:
            tally.refused_latencies.append(took)
            wait = float(answer.headers.get("Retry-After", "1"))
            await asyncio.sleep(min(wait, retry_cap) * (0.5 + rng.random()))
        else:
            await asyncio.sleep(0.1)  # an error: do not spin on it


async def run_level(base: str, headers: dict, clients: int, seconds: float, queries, speakers, args,
                    sampler: RssSampler) -> dict:
    tally = Tally()
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=args.timeout, limits=limits) as http:
        started = time.monotonic()
        deadline = started + seconds
        rngs = [random.Random(args.seed * 1000 + i) for i in range(clients)]
        rss_report = asyncio.create_task(report_rss(sampler, started, deadline, args.rss_every))
        await asyncio.gather(*(client(http, queries, speakers, args.verify_share, deadline, tally, rngs[i],
                                      args.retry_cap) for i in range(clients)))
        elapsed = time.monotonic() - started
        rss_report.cancel()
    answered = sum(len(v) for v in tally.latencies.values())
    rss = sampler.between(started, started + elapsed + 0.5)
    first, last = (sampler.between(started, started + min(30.0, elapsed / 4)),
                   sampler.between(started + elapsed - min(30.0, elapsed / 4), started + elapsed + 0.5))
    p50, p95, p99 = tally.percentiles()
    return {
        "clients": clients, "seconds": round(elapsed, 1), "answered": answered,
        "throughput_per_s": round(answered / elapsed, 2),
        "p50_ms": round(p50, 1), "p95_ms": round(p95, 1), "p99_ms": round(p99, 1),
        "verify_p50_ms": round(tally.percentiles("verify")[0], 1),
        "identify_p50_ms": round(tally.percentiles("identify")[0], 1),
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items(), key=lambda kv: str(kv[0]))},
        "errors": {str(k): v for k, v in tally.statuses.items() if not (isinstance(k, int) and 200 <= k < 300)},
        "refusal_p99_ms": round(float(np.percentile(tally.refused_latencies, 99)) * 1000, 1)
        if tally.refused_latencies else None,
        "identify_top1": f"{tally.identified['right']}/{tally.identified['right'] + tally.identified['wrong']}",
        "rss_mib_peak": round(max(rss), 1) if rss else None,
        "rss_mib_first": round(float(np.median(first)), 1) if first else None,
        "rss_mib_last": round(float(np.median(last)), 1) if last else None,
        "processes": max((c for t, _, c in sampler.samples if started <= t), default=None),
    }


async def report_rss(sampler: RssSampler, started: float, deadline: float, every: float) -> None:
    if every <= 0:
        return
    while time.monotonic() + every <= deadline + 0.1:
        await asyncio.sleep(every)
        if sampler.samples:
            _, rss, count = sampler.samples[-1]
            print(f"    t={time.monotonic() - started:6.0f} s  server RSS {rss:7.1f} MiB ({count} processes)",
                  flush=True)


# --- the server -------------------------------------------------------------------------------------

def start_server(database: str, port: int, args, log_path: Path) -> subprocess.Popen:
    command = [sys.executable, str(REPO / "scripts" / "serve.py"), "--database", database, "--host", "127.0.0.1",
               "--port", str(port), "--workers", str(args.workers), "--queue_size", str(args.queue_size),
               "--requests_per_minute", "1000000"]
    log = open(log_path, "w")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=tempfile.gettempdir())  # no deep-speaker-data/ there: the shipped model serves


def wait_ready(base: str, server: subprocess.Popen, log_path: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"error: the server exited ({server.returncode}):\n{log_path.read_text()}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"error: the server did not answer within {timeout:g} s:\n{log_path.read_text()}")


def stop_server(server: subprocess.Popen) -> int | None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return server.wait()


def print_table(rows: list[dict], capacity: int) -> None:
    print()
    print(f"{'clients':>7} {'load':>6} {'answered':>8} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
          f"{'errors by status':<22} {'503 p99 ms':>10} {'top-1':>8} {'RSS MiB first/last/peak':>24}")
    for row in rows:
        load = "below" if row["clients"] <= capacity else "above"
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(row["errors"].items())) or "0"
        refusal = "" if row["refusal_p99_ms"] is None else f"{row['refusal_p99_ms']:.1f}"
        rss = f"{row['rss_mib_first']:.0f}/{row['rss_mib_last']:.0f}/{row['rss_mib_peak']:.0f}"
        print(f"{row['clients']:>7} {load:>6} {row['answered']:>8} {row['throughput_per_s']:>7.2f} "
              f"{row['p50_ms']:>8.0f} {row['p95_ms']:>8.0f} {row['p99_ms']:>8.0f} {errors:<22} {refusal:>10} "
              f"{row['identify_top1']:>8} {rss:>24}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="the real-speech folder")
    p.add_argument("--database", default=None, help="default: a new SQLite file in a temp folder")
    p.add_argument("--workers", type=int, default=2, help="the server's model workers")
    p.add_argument("--queue_size", type=int, default=2, help="the server's queue (capacity: workers + queue_size)")
    p.add_argument("--clients", type=int, nargs="+", default=None,
                   help="concurrent clients, one level after another (default: workers, and 3x the capacity)")
    p.add_argument("--seconds", type=float, default=30.0, help="how long each level runs")
    p.add_argument("--speakers", type=int, default=12, help="held-out speakers enrolled")
    p.add_argument("--queries", type=int, default=3, help="recordings per speaker sent as queries")
    p.add_argument("--verify_share", type=float, default=0.5, help="share of verify requests (the rest: identify)")
    p.add_argument("--retry_cap", type=float, default=1.0, help="longest wait after a 503 (its Retry-After, capped)")
    p.add_argument("--timeout", type=float, default=60.0, help="a client's timeout per request")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of load before the first level, not counted")
    p.add_argument("--rss_every", type=float, default=30.0, help="print the server's RSS this often (0: never)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the rows here too")
    args = p.parse_args(argv)
    capacity = args.workers + args.queue_size
    levels = args.clients or [args.workers, 3 * capacity]

    from deep_speaker.service.keys import create_key
    from deep_speaker.service.store import Store

    recordings = heldout_recordings(args.data, args.speakers, args.queries)
    folder = Path(tempfile.mkdtemp(prefix="deep-speaker-serve-load-"))
    database = args.database or f"sqlite:///{folder / 'speakers.db'}"
    store = Store(database)
    key = create_key(store, ["admin"], name="serve_load").key
    store.close()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {key}"}
    log_path = folder / "server.log"
    print(f"server: {args.workers} worker(s), queue {args.queue_size} (capacity {capacity}), {database}; "
          f"log {log_path}; {os.cpu_count()} CPUs", flush=True)
    server = start_server(database, port, args, log_path)
    rows = []
    try:
        started = time.monotonic()
        wait_ready(base, server, log_path)
        print(f"ready in {time.monotonic() - started:.1f} s", flush=True)
        with httpx.Client(base_url=base, headers=headers, timeout=120) as http:
            for speaker, (enrol, _) in recordings.items():
                answer = http.post(f"/v1/speakers/{speaker}/enrol",
                                   files=[("files", (f.name, f.read_bytes(), "audio/flac")) for f in enrol])
                if answer.status_code != 201:
                    raise SystemExit(f"error: enrolling {speaker}: {answer.status_code} {answer.text}")
        queries = [(speaker, f.name, f.read_bytes()) for speaker, (_, files) in recordings.items() for f in files]
        speakers = list(recordings)
        print(f"enrolled {len(speakers)} speakers x {ENROLLED_FILES} recordings; {len(queries)} query recordings; "
              f"verify share {args.verify_share:g}", flush=True)

        async def drive():
            sampler = RssSampler(server.pid)
            stop = asyncio.Event()
            sampling = asyncio.create_task(sampler.run(stop))
            if args.warmup > 0:
                await run_level(base, headers, args.workers, args.warmup, queries, speakers, args,
                                RssSampler(server.pid))
            for clients in levels:
                print(f"  {clients} clients for {args.seconds:g} s ...", flush=True)
                rows.append(await run_level(base, headers, clients, args.seconds, queries, speakers, args, sampler))
                await asyncio.sleep(1.0)  # let refused clients' last answers drain
            stop.set()
            await sampling

        asyncio.run(drive())
    finally:
        status = stop_server(server)
    log = log_path.read_text(errors="replace")
    print_table(rows, capacity)
    print(f"\nserver exit status {status} after SIGTERM; tracebacks in its log: {log.count('Traceback')}; "
          f"500s answered: {sum(r['statuses'].get('500', 0) for r in rows)}")
    if args.json:
        args.json.write_text(json.dumps({"workers": args.workers, "queue_size": args.queue_size,
                                         "capacity": capacity, "cpus": os.cpu_count(), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
