"""Overload and soak of a route-only router in its own process: a burst, capacity, a long run.

    nice -n 10 .venv/bin/python benchmarks/router_soak.py --minutes 10   # benchmarks/results/
    nice -n 10 .venv/bin/python benchmarks/router_soak.py --generate --burst-factor 0 --minutes 3

The router runs in a subprocess (`soak_server.py`: the untrained seeded MoE in-process, or the
trained one of ``--estimator``), so its resident memory and open descriptors are its own, read
from /proc/PID; its asyncio tasks, calls in flight, queue depth and request counts come from its
/metrics (`router.metrics`). Its per-client concurrency limit is raised above the burst, so the
queue bound alone refuses. Two modes:

- route-only (default): no engines; every call is a one-prompt, counted Route (not a dry run),
  as real traffic: the router's own capacity;
- ``--generate``: a managed tritonserver serves ``triton_repo/`` and every call is a Generate
  with target EDGE (the edge engine through Triton, PNG back): capacity is then Triton's on
  this host, and the soak checks the router's client side of it (channel, deadlines, encode).

Three phases:

1. burst (route-only; ``--burst-factor 0`` skips it): ``--burst-factor`` x ``--max-queue``
   Route calls sent at once. Goal: every reply is OK or
   RESOURCE_EXHAUSTED quoting ``max_queue``, some are refused, the OK replies are exactly the
   requests the server accepted (its budget counts and its requests_total, so none accepted was
   lost), and the server still serves afterwards with an empty queue;
2. capacity: a closed loop with ``--capacity-concurrency`` calls in flight for ``--capacity-s``
   (in flight stays bounded, so p99 does): requests/s;
3. soak: an open loop at ``--load`` x capacity for ``--minutes``, in windows of ``--window-s``:
   per window p50/p99, status codes, and the server's RSS, descriptors and tasks. Goals (issue
   22): every later window's p99 within 1.5x the first window's; peak RSS after the first window
   within +5% of its RSS at the end of the first window; tasks, descriptors and calls in flight
   back to their idle values before the soak once it has drained (no leak); no request lost.

The JSON says which goals were met and by how much, with the load average (the host is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import numpy as np
from bench_io import host_info, write_result
from prometheus_client.parser import text_string_to_metric_families
from router_load import timed_call, timed_route

from t2i_router.triton import ManagedTritonServer, TritonServerConfig
from t2i_router.world import sample_prompts
from t2i_router_client import router_pb2, router_pb2_grpc

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GOAL_P99_RATIO, GOAL_RSS_GROWTH = 1.5, 0.05
#: One timed call of the load: (call number, latencies to append to) -> its status.
Call = Callable[[int, list[float]], Awaitable[grpc.StatusCode]]
SETTLE_S = 2.0  # after a load ends, before the idle probe (grpc finishes its calls' cleanup)


# ----- the server process


class ServerProcess:
    """`soak_server.py` in a subprocess; `start` waits for its ready line."""

    def __init__(self, args: argparse.Namespace, triton_url: str | None = None) -> None:
        self.argv = [
            sys.executable,
            str(HERE / "soak_server.py"),
            "--max-queue", str(args.max_queue),
            "--max-concurrent-per-client", str(max(args.max_queue * args.burst_factor * 2, 1024)),
            "--features", args.features,
        ]  # fmt: skip
        if args.estimator:
            self.argv += ["--estimator", args.estimator]
        if triton_url:
            self.argv += ["--triton-url", triton_url]
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}

    async def start(self, timeout_s: float = 180.0) -> dict:
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), timeout_s)
        if not line:
            raise RuntimeError(f"soak_server.py exited with {self.proc.wait()} before serving")
        self.info = json.loads(line)
        return self.info

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; the exit code of a graceful stop."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode


def _status_field(pid: int, name: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {name}")


def scrape(metrics_port: int) -> dict[tuple[str, tuple], float]:
    """The server's /metrics as {(sample name, sorted labels): value}."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def metric(samples: dict, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def _load_calls(samples: dict, status: str) -> int:
    """Route and Generate calls (the load's rpcs, not GetBudget) finished with ``status``."""
    name = "t2i_router_requests_total"
    return int(sum(metric(samples, name, rpc=rpc, status=status) for rpc in ("Route", "Generate")))


async def probe(server: ServerProcess) -> dict:
    """The server's RSS, descriptors and threads (/proc) and its tasks, calls in flight, queue
    depth and Route + Generate counts by status (/metrics), read in that order."""
    pid = server.info["pid"]
    rss_kb = _status_field(pid, "VmRSS")
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    threads = _status_field(pid, "Threads")
    samples = await asyncio.to_thread(scrape, server.info["metrics_port"])
    return {
        "rss_mib": round(rss_kb / 1024, 2),
        "open_fds": fds,
        "threads": threads,
        "asyncio_tasks": int(metric(samples, "t2i_router_asyncio_tasks")),
        "calls_in_flight": int(metric(samples, "t2i_router_calls_in_flight")),
        "queue_depth": int(metric(samples, "t2i_router_queue_depth")),
        "ok": _load_calls(samples, "OK"),
        "refused": _load_calls(samples, "RESOURCE_EXHAUSTED"),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


# ----- phases


def _ms(latencies_s: list[float], q: float) -> float | None:
    return round(float(np.percentile(np.asarray(latencies_s) * 1e3, q)), 3) if latencies_s else None


async def _accepted(stub) -> int:
    """Decisions the server's budget has made (counted and uncounted): the requests it accepted."""
    b = await stub.GetBudget(router_pb2.GetBudgetRequest(), timeout=10)
    return b.decisions + b.uncounted_decisions


async def burst(stub, server: ServerProcess, prompts: list[str], n: int, max_queue: int) -> dict:
    """``n`` counted one-prompt Route calls sent at once (see the module docstring)."""
    limit = f"limit is max_queue={max_queue}"
    before, accepted_before = await probe(server), await _accepted(stub)
    latencies: list[float] = []
    refused_latencies: list[float] = []
    codes: Counter[str] = Counter()
    unquoted, malformed = 0, 0

    async def one(prompt: str) -> None:
        nonlocal unquoted, malformed
        start = time.perf_counter()
        try:
            reply = await stub.Route(
                router_pb2.RouteRequest(prompts=[prompt], dry_run=False), timeout=120
            )
        except grpc.aio.AioRpcError as e:
            codes[e.code().name] += 1
            if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                unquoted += limit not in e.details()
                refused_latencies.append(time.perf_counter() - start)
            return
        codes["OK"] += 1
        malformed += len(reply.decisions) != 1 or reply.decisions[0].choice == ""
        latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(one(prompts[i % len(prompts)]) for i in range(n)))
    wall_s = time.perf_counter() - start
    accepted = await _accepted(stub) - accepted_before
    after = await probe(server)
    serves_after = await timed_route(stub, prompts[0], [], dry_run=True) == grpc.StatusCode.OK
    ok, refused = codes["OK"], codes["RESOURCE_EXHAUSTED"]
    server_ok = after["ok"] - before["ok"]
    server_refused = after["refused"] - before["refused"]
    out = {
        "max_queue": max_queue,
        "sent": n,
        "codes": dict(codes),
        "ok": ok,
        "refused": refused,
        "refused_without_the_limit_in_the_message": unquoted,
        "ok_replies_without_one_decision": malformed,
        "accepted_by_server_budget": accepted,
        "ok_by_server_metrics": server_ok,
        "refused_by_server_metrics": server_refused,
        "lost": accepted - ok,
        "wall_s": round(wall_s, 3),
        "ok_p50_ms": _ms(latencies, 50),
        "ok_p99_ms": _ms(latencies, 99),
        "refused_p50_ms": _ms(refused_latencies, 50),
        "refused_p99_ms": _ms(refused_latencies, 99),
        "after": {k: after[k] for k in ("queue_depth", "calls_in_flight")},
        "serves_after": serves_after,
    }
    out["met"] = bool(
        ok + refused == n
        and refused > 0
        and unquoted == 0
        and malformed == 0
        and ok == accepted == server_ok
        and refused == server_refused
        and after["queue_depth"] == 0
        and after["calls_in_flight"] == 0
        and serves_after
    )
    return out


def route_call(stub, prompts: list[str]) -> Call:
    """A counted one-prompt Route."""

    async def call(i: int, latencies: list[float]) -> grpc.StatusCode:
        return await timed_route(stub, prompts[i % len(prompts)], latencies, dry_run=False)

    return call


def generate_call(stub, prompts: list[str]) -> Call:
    """A Generate on the edge engine (target EDGE), seed ``i``."""

    async def call(i: int, latencies: list[float]) -> grpc.StatusCode:
        request = router_pb2.GenerateRequest(
            prompt=prompts[i % len(prompts)], seed=i, target=router_pb2.TARGET_EDGE
        )
        return await timed_call(lambda: stub.Generate(request, timeout=120), latencies)

    return call


async def capacity(call: Call, seconds: float, concurrency: int) -> dict:
    """Closed loop: ``concurrency`` workers calling back to back for ``seconds``."""
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    start = time.perf_counter()
    end = start + seconds
    counter = iter(range(10**12))

    async def worker() -> None:
        while time.perf_counter() < end:
            i = next(counter)
            codes[(await call(i, latencies)).name] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall_s = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "seconds": round(wall_s, 2),
        "codes": dict(codes),
        "requests_per_s": round(len(latencies) / wall_s, 2),
        "p50_ms": _ms(latencies, 50),
        "p99_ms": _ms(latencies, 99),
    }


async def soak(
    call: Call, server: ServerProcess, rate: float, seconds: float, window_s: float
) -> dict:
    """Open loop at ``rate`` for ``seconds``; calls are tallied in the window they were sent in."""
    n_windows = max(1, math.ceil(seconds / window_s - 1e-9))
    latencies: list[list[float]] = [[] for _ in range(n_windows)]
    codes: list[Counter[str]] = [Counter() for _ in range(n_windows)]
    probes: list[list[dict]] = [[] for _ in range(n_windows)]
    sample_s = min(5.0, window_s / 2)
    await asyncio.sleep(SETTLE_S)
    idle_before = await probe(server)
    start = time.perf_counter()

    async def one(i: int, w: int) -> None:
        codes[w][(await call(i, latencies[w])).name] += 1

    async def sampler() -> None:
        k = 1
        while True:
            await asyncio.sleep(max(0.0, start + k * sample_s - time.perf_counter()))
            t = time.perf_counter() - start
            w = min(int((t - 1e-6) // window_s), n_windows - 1)
            probes[w].append({"t_s": round(t, 1), **await probe(server)})
            k += 1

    sampling = asyncio.create_task(sampler())
    in_flight: set[asyncio.Task[None]] = set()
    i = 0
    while (t_i := i / rate) < seconds:
        delay = start + t_i - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(i, min(int(t_i // window_s), n_windows - 1)))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        i += 1
    sent_s = time.perf_counter() - start
    await asyncio.gather(*in_flight)
    drained_s = time.perf_counter() - start
    await asyncio.sleep(max(0.0, start + seconds - time.perf_counter()))
    sampling.cancel()
    await asyncio.gather(sampling, return_exceptions=True)
    t = time.perf_counter() - start  # the last window ends with a sample of its own
    probes[-1].append({"t_s": round(t, 1), **await probe(server)})
    await asyncio.sleep(SETTLE_S)
    idle_after = await probe(server)

    windows = []
    for w in range(n_windows):
        ps = probes[w]
        sent = sum(codes[w].values())
        windows.append(
            {
                "window": w + 1,
                "sent": sent,
                "codes": dict(codes[w]),
                "p50_ms": _ms(latencies[w], 50),
                "p99_ms": _ms(latencies[w], 99),
                "max_ms": _ms(latencies[w], 100),
                "rss_mib_end": ps[-1]["rss_mib"] if ps else None,
                "rss_mib_max": max(p["rss_mib"] for p in ps) if ps else None,
                "open_fds_max": max(p["open_fds"] for p in ps) if ps else None,
                "asyncio_tasks_max": max(p["asyncio_tasks"] for p in ps) if ps else None,
                "queue_depth_max": max(p["queue_depth"] for p in ps) if ps else None,
                "load_average_1m": ps[-1]["load_average_1m"] if ps else None,
            }
        )
    ok = sum(c["OK"] for c in codes)
    return {
        "offered_rate": round(rate, 2),
        "seconds": seconds,
        "window_s": window_s,
        "sent": i,
        "sent_s": round(sent_s, 2),
        "drained_s": round(drained_s, 2),
        "achieved_rate": round(i / sent_s, 2),
        "codes": dict(sum(codes, Counter())),
        "ok": ok,
        "ok_by_server_metrics": idle_after["ok"] - idle_before["ok"],
        "idle_before": idle_before,
        "idle_after": idle_after,
        "windows": windows,
        "samples": [p for ps in probes for p in ps],
    }


def goals(s: dict) -> dict:
    """The soak's goals, each with its figure, its bound and whether it was met (`run` adds the
    burst's and ``all_met``)."""
    windows = s["windows"]
    first, later = windows[0], windows[1:]
    p99s = [w["p99_ms"] for w in later if w["p99_ms"] is not None]
    worst_p99 = max(p99s) if p99s else None
    ratio = worst_p99 / first["p99_ms"] if worst_p99 and first["p99_ms"] else None
    rss_ref = first["rss_mib_end"]
    rss_peak = max((w["rss_mib_max"] for w in later if w["rss_mib_max"]), default=None)
    growth = rss_peak / rss_ref - 1 if rss_peak and rss_ref else None
    before, after = s["idle_before"], s["idle_after"]
    lost = s["ok_by_server_metrics"] - s["ok"]
    out = {
        "p99_within_1_5x_first_window": {
            "first_window_p99_ms": first["p99_ms"],
            "worst_later_p99_ms": worst_p99,
            "ratio": None if ratio is None else round(ratio, 3),
            "bound": GOAL_P99_RATIO,
            "met": ratio is not None and ratio <= GOAL_P99_RATIO,
        },
        "rss_within_5_percent": {
            "rss_mib_end_of_first_window": rss_ref,
            "peak_rss_mib_after_it": rss_peak,
            "growth": None if growth is None else round(growth, 4),
            "bound": GOAL_RSS_GROWTH,
            "met": growth is not None and growth <= GOAL_RSS_GROWTH,
        },
    }
    for key in ("asyncio_tasks", "open_fds", "calls_in_flight", "queue_depth"):
        out[f"no_leaked_{key}"] = {
            "idle_before": before[key],
            "idle_after": after[key],
            "delta": after[key] - before[key],
            "met": after[key] <= before[key],
        }
    out["no_request_lost"] = {
        "client_ok": s["ok"],
        "server_ok": s["ok_by_server_metrics"],
        "lost": lost,
        "met": lost == 0,
    }
    return out


async def run(args: argparse.Namespace, triton_url: str | None = None) -> dict:
    load_before = os.getloadavg()[0]
    server = ServerProcess(args, triton_url)
    prompts = [t for t, _ in sample_prompts(512, seed=4242)]
    mode = (
        "generate: Generate calls with target EDGE through a router in its own process to a "
        "managed tritonserver (triton_repo/): Triton's edge capacity on this host"
        if args.generate
        else "route-only: counted one-prompt Route calls to a router in its own process, "
        "in-process estimator, no engines (the router's own capacity)"
    )
    result: dict = {
        "command": "benchmarks/router_soak.py " + " ".join(args.argv),
        "mode": mode,
        "host": host_info() | {"load_average_1m_at_start": round(load_before, 2)},
    }
    try:
        info = await server.start()
        result["estimator"] = info["estimator"]
        result["server"] = {"argv": server.argv[1:], "at_start": await probe(server)}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{info['port']}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            call = (generate_call if args.generate else route_call)(stub, prompts)
            await capacity(call, 2.0, 4)  # warm-up: first calls load lazily
            if args.burst_factor > 0:
                result["burst"] = await burst(
                    stub, server, prompts, args.max_queue * args.burst_factor, args.max_queue
                )
            cap = await capacity(call, args.capacity_s, args.capacity_concurrency)
            result["capacity"] = cap
            rate = args.load * cap["requests_per_s"]
            result["soak"] = await soak(call, server, rate, args.minutes * 60, args.window_s)
            result["soak"]["load"] = args.load
    finally:
        result["server_exit_code"] = server.stop()
    met = ({"burst": result["burst"]["met"]} if "burst" in result else {}) | goals(result["soak"])
    met["all_met"] = all(g if isinstance(g, bool) else g["met"] for g in met.values())
    result["goals"] = met
    result["host"]["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--estimator", help="a trained estimator folder (default: untrained MoE)")
    parser.add_argument("--features", choices=("static", "contextual"), default="static")
    parser.add_argument(
        "--generate", action="store_true", help="Generate (edge) through a managed Triton"
    )
    parser.add_argument("--max-queue", type=int, default=64, help="the server's queue bound")
    parser.add_argument(
        "--burst-factor", type=int, default=10, help="burst = this x max-queue (0: no burst)"
    )
    parser.add_argument("--capacity-s", type=float, default=20.0, help="closed-loop seconds")
    parser.add_argument("--capacity-concurrency", type=int, default=16)
    parser.add_argument("--load", type=float, default=0.8, help="soak rate / capacity")
    parser.add_argument("--minutes", type=float, default=10.0, help="soak duration")
    parser.add_argument("--window-s", type=float, default=60.0, help="soak window")
    parser.add_argument(
        "--out", default=None, help="JSON path (default: benchmarks/results/router_soak-TIME.json)"
    )
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else []
    if args.generate:
        config = TritonServerConfig(model_repository=ROOT / "triton_repo", startup_timeout_s=400)
        with ManagedTritonServer(config) as triton:
            result = asyncio.run(run(args, triton.grpc_url))
    else:
        result = asyncio.run(run(args))
    write_result(result, args.out, "router_soak")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
