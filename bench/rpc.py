"""Benchmark of the RPC layer (issue 2): run ``python -m bench.rpc``.

Not a timed test: it measures our server and its references side by side in
one run and prints rates, times and their ratios (machines are noisy, so
only the ratios mean anything across machines).

(a) ``VM.get_record`` calls/s over XML-RPC (``POST /``) and JSON-RPC
    (``POST /jsonrpc``, JSON-RPC 2.0), HTTP/1.1 keep-alive, ``--clients``
    concurrent connections each with one call in flight.  The reference is a
    bare aiohttp server (own process) whose handler returns the very response
    bytes our server gave for the same call, with the same headers.  The load
    generator runs in a third process (plain asyncio protocols, pre-built
    requests) and reports both its own CPU use and the server's, so one can
    see that the server, not the client, is the bottleneck.
    Target: ours >= 50% of bare.

(b) ``VM.get_all_records`` on ``--vms`` VMs (written straight into the
    SQLite database before the server starts): client-side time for the whole
    response (request sent to last body byte read; parsing excluded), the
    first call after start (cold: records not yet encoded) and repeats
    (warm: cached fragments), over XML-RPC and JSON-RPC.  The reference is
    the standard library's encoder alone on the same records as the stdlib
    client parses them: ``xmlrpc.client.dumps((records,), methodresponse=True,
    allow_none=True)`` (and, for information only, ``json.dumps``).  The
    "transfer floor" is the bare server sending our warm response bytes.
    Target: ours no slower than the stdlib encoder alone.

The latest figures go to docs/performance.md, section "RPC layer (issue 2)".
Internal entry points (used by the benchmark itself): ``_bare`` runs the
reference server, ``_load`` runs the load generator.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import gc
import http.client
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from pathlib import Path

from bench.procs import cpu_seconds, stop
from bench.report import REPO, publish

SECTION = "## RPC layer (issue 2)"
GET_RECORD_TARGET = 0.50  # ours / bare calls per second
ALL_RECORDS_TARGET = 1.00  # ours / stdlib encoder time, at most


# -----------------------------------------------------------------------------
# small helpers
# -----------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def nproc() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def xml_request(method: str, *params) -> bytes:
    return xmlrpc.client.dumps(tuple(params), method, allow_none=True).encode()


def json_request(method: str, *params) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1}).encode()


def http_request(port: int, path: str, content_type: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Client:
    """One keep-alive connection (stdlib http.client) for setup and big calls."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

    def post(self, path: str, content_type: str, body: bytes) -> tuple[bytes, dict, float]:
        """Response body, the headers a replay needs, and the seconds from send to last byte."""
        t0 = time.perf_counter()
        self.conn.request("POST", path, body, {"Content-Type": content_type})
        resp = self.conn.getresponse()
        data = resp.read()
        elapsed = time.perf_counter() - t0
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status} from {path}: {data[:200]!r}")
        headers = {k: v for k, v in resp.getheaders()
                   if k.lower() == "content-type" or k.lower().startswith("access-control-")}
        return data, headers, elapsed

    def xml(self, method: str, *params):
        data, _, _ = self.post("/", "text/xml", xml_request(method, *params))
        reply = xmlrpc.client.loads(data)[0][0]
        if reply.get("Status") != "Success":
            raise RuntimeError(f"{method} failed: {reply.get('ErrorDescription')}")
        return reply["Value"]

    def close(self) -> None:
        self.conn.close()


# -----------------------------------------------------------------------------
# the database: --vms VMs written straight through the write path
# -----------------------------------------------------------------------------

GiB = 1024**3


def vm_values(i: int, make_uuid) -> dict:
    """A plausible halted HVM guest: every field VM.create requires, a few more."""
    return {
        "uuid": make_uuid(),
        "name_label": f"bench-vm-{i:05d}",
        "name_description": "Created by bench.rpc",
        "power_state": "Halted",
        "user_version": 1,
        "is_a_template": False,
        "memory_target": 2 * GiB,
        "memory_static_max": 2 * GiB,
        "memory_dynamic_max": 2 * GiB,
        "memory_dynamic_min": 1 * GiB,
        "memory_static_min": GiB // 2,
        "VCPUs_params": {},
        "VCPUs_max": 2,
        "VCPUs_at_startup": 2,
        "actions_after_shutdown": "destroy",
        "actions_after_reboot": "restart",
        "actions_after_crash": "restart",
        "PV_bootloader": "",
        "PV_kernel": "",
        "PV_ramdisk": "",
        "PV_args": "",
        "PV_bootloader_args": "",
        "PV_legacy_args": "",
        "HVM_boot_policy": "BIOS order",
        "HVM_boot_params": {"order": "cdn"},
        "HVM_shadow_multiplier": 1.0,
        "platform": {"timeoffset": "0", "nx": "true", "acpi": "1", "apic": "true",
                     "pae": "true", "viridian": "true", "device-model": "qemu-upstream-compat"},
        "PCI_bus": "",
        "other_config": {"base_template_name": "Other install media",
                         "install-methods": "cdrom", "mac_seed": make_uuid()},
        "recommendations": '<restrictions><restriction field="memory-static-max" '
                           'max="137438953472"/><restriction field="vcpus-max" max="32"/>'
                           "</restrictions>",
        "domain_type": "hvm",
        "tags": ["bench"],
    }


def populate(db_url: str, count: int, **changes) -> float:
    """``count`` VMs of ``vm_values`` (with ``changes``) written through the write path."""
    from db.store import Database
    from xapi.refs import make_ref, make_uuid

    t0 = time.perf_counter()
    db = Database(db_url)
    db.upgrade()
    done = 0
    while done < count:
        with db.write() as tx:
            for i in range(done, min(done + 2000, count)):
                tx.insert("VM", make_ref(), {**vm_values(i, make_uuid), **changes})
        done = min(done + 2000, count)
    db.close()
    return time.perf_counter() - t0


# -----------------------------------------------------------------------------
# the reference server: bare aiohttp, the captured bytes verbatim
# -----------------------------------------------------------------------------


def bare_main(port: int, spec_dir: str) -> None:
    from aiohttp import web

    spec = json.loads(Path(spec_dir, "spec.json").read_text())
    responses = {
        path: (Path(spec_dir, item["file"]).read_bytes(), item["headers"])
        for path, item in spec.items()
    }
    default = responses["/"]

    async def handle(request: web.Request) -> web.Response:
        body, headers = responses.get(request.path, default)
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None,
                handle_signals=True, backlog=1024)


def start_bare(responses: dict[str, tuple[bytes, dict]]) -> tuple[subprocess.Popen, int, str]:
    from tests.support import free_port

    spec_dir = tempfile.mkdtemp(prefix="bench-bare-")
    spec = {}
    for i, (path, (body, headers)) in enumerate(responses.items()):
        name = f"body{i}"
        Path(spec_dir, name).write_bytes(body)
        spec[path] = {"file": name, "headers": headers}
    Path(spec_dir, "spec.json").write_text(json.dumps(spec))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.rpc", "_bare", str(port), spec_dir],
                            cwd=REPO)
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("bare server exited")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, port, spec_dir
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("bare server did not start")


# -----------------------------------------------------------------------------
# the load generator: asyncio protocols, one call in flight per connection
# -----------------------------------------------------------------------------


class _LoadState:
    def __init__(self, expected_len: int):
        self.expected_len = expected_len
        self.counting = False
        self.stopping = False
        self.count = 0
        self.errors = 0
        self.first_error = ""
        self.latencies: list[float] = []
        self.open = 0
        self.all_closed: asyncio.Future | None = None


class _LoadConn(asyncio.Protocol):
    def __init__(self, state: _LoadState, request: bytes):
        self.state = state
        self.request = request
        self.buf = bytearray()
        self.need = -1
        self.sent = 0.0
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.state.open += 1
        self._send()

    def _send(self):
        self.buf.clear()
        self.need = -1
        self.sent = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data):
        buf = self.buf
        buf += data
        if self.need < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            at = head.find(b"\r\ncontent-length:")
            if at < 0 or not head.startswith(b"http/1.1 200"):
                self._error(f"unexpected response head: {bytes(buf[:end])[:200]!r}")
                return
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17:stop if stop >= 0 else len(head)])
            self.need = end + 4 + length
            if length != self.state.expected_len:
                self._error(f"body length {length}, expected {self.state.expected_len}")
                return
        if len(buf) < self.need:
            return
        state = self.state
        if state.counting:
            state.count += 1
            state.latencies.append(time.perf_counter() - self.sent)
        if state.stopping:
            self.transport.close()
        else:
            self._send()

    def _error(self, msg: str):
        self.state.errors += 1
        self.state.first_error = self.state.first_error or msg
        self.transport.close()

    def connection_lost(self, exc):
        state = self.state
        state.open -= 1
        if not state.stopping:
            state.errors += 1
            state.first_error = state.first_error or f"connection lost: {exc}"
        if state.open == 0 and state.all_closed is not None and not state.all_closed.done():
            state.all_closed.set_result(None)


async def _load(port: int, request: bytes, clients: int, warmup: float, duration: float,
                expected_len: int, server_pid: int) -> dict:
    loop = asyncio.get_running_loop()
    state = _LoadState(expected_len)
    state.all_closed = loop.create_future()
    for _ in range(clients):
        await loop.create_connection(lambda: _LoadConn(state, request), "127.0.0.1", port)
    await asyncio.sleep(warmup)
    srv0, cli0, t0 = cpu_seconds(server_pid), time.process_time(), time.perf_counter()
    state.counting = True
    await asyncio.sleep(duration)
    state.counting = False
    t1, cli1, srv1 = time.perf_counter(), time.process_time(), cpu_seconds(server_pid)
    state.stopping = True
    try:
        await asyncio.wait_for(asyncio.shield(state.all_closed), 10)
    except asyncio.TimeoutError:
        pass
    lat = sorted(state.latencies) or [float("nan")]
    elapsed = t1 - t0
    return {
        "calls": state.count,
        "seconds": elapsed,
        "rate": state.count / elapsed,
        "p50_ms": lat[len(lat) // 2] * 1e3,
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3,
        "server_cpu": (srv1 - srv0) / elapsed,
        "client_cpu": (cli1 - cli0) / elapsed,
        "errors": state.errors,
        "first_error": state.first_error,
    }


def load_main(argv: list[str]) -> None:
    port, req_file, clients, warmup, duration, expected_len, server_pid = argv
    request = Path(req_file).read_bytes()
    gc.disable()  # no collector pauses in the client; it allocates little
    result = asyncio.run(_load(int(port), request, int(clients), float(warmup), float(duration),
                               int(expected_len), int(server_pid)))
    print(json.dumps(result), flush=True)


def run_load(port: int, server_pid: int, request: bytes, expected_len: int, args) -> dict:
    with tempfile.NamedTemporaryFile(prefix="bench-req-", delete=False) as f:
        f.write(request)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "bench.rpc", "_load", str(port), f.name, str(args.clients),
             str(args.warmup), str(args.duration), str(expected_len), str(server_pid)],
            cwd=REPO, capture_output=True, text=True, timeout=args.warmup + args.duration + 60,
        )
    finally:
        os.unlink(f.name)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{out.stderr}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["errors"]:
        raise RuntimeError(f"load generator saw {result['errors']} errors: {result['first_error']}")
    return result


# -----------------------------------------------------------------------------
# the benchmark
# -----------------------------------------------------------------------------


def best_of(fn, repeat: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), times


def bench_all_records(server, session: str, args) -> tuple[dict, dict]:
    """(b): VM.get_all_records end to end, cold and warm, and the stdlib encoders.

    Also returns the warm responses, for the transfer floor (see bench_floor).
    """
    out: dict = {}
    bodies: dict = {}
    client = Client(server.port)
    for proto, path, ctype, body in (
        ("xml", "/", "text/xml", xml_request("VM.get_all_records", session)),
        ("json", "/jsonrpc", "application/json", json_request("VM.get_all_records", session)),
    ):
        # The first call of each wire format is cold: the XML calls fill only
        # the XML fragments, so the first JSON call encodes every record again.
        data, headers, cold = client.post(path, ctype, body)
        warm = []
        for _ in range(args.repeat):
            data, headers, t = client.post(path, ctype, body)
            warm.append(t)
        out[f"{proto}_bytes"] = len(data)
        out[f"{proto}_cold"], out[f"{proto}_warm"], out[f"{proto}_warm_all"] = cold, min(warm), warm
        log(f"{proto} get_all_records: {len(data) / 1e6:.1f} MB, cold {cold:.3f} s, "
            f"warm {', '.join(f'{t:.3f}' for t in warm)} s")
        bodies[proto] = (data, headers)

        t0 = time.perf_counter()
        if proto == "xml":
            reply = xmlrpc.client.loads(data)[0][0]
            assert reply["Status"] == "Success", reply
            records = reply["Value"]

            def encode(records=records):
                return xmlrpc.client.dumps((records,), methodresponse=True, allow_none=True)
        else:
            records = json.loads(data)["result"]

            def encode(records=records):
                return json.dumps({"jsonrpc": "2.0", "result": records, "id": 1})
        parse = time.perf_counter() - t0
        del data
        out["records"] = len(records)
        ref, ref_all = best_of(encode, args.repeat)
        out[f"{proto}_stdlib"], out[f"{proto}_stdlib_all"] = ref, ref_all
        out[f"{proto}_stdlib_bytes"] = len(encode().encode())
        log(f"{proto} stdlib encoder on the same {len(records)} records "
            f"({out[f'{proto}_stdlib_bytes'] / 1e6:.1f} MB): "
            f"{', '.join(f'{t:.3f}' for t in ref_all)} s (stdlib parse took {parse:.1f} s)")
        del records, encode  # both hold the records: free them before the next protocol's
    client.close()
    return out, bodies


def bench_floor(bare_port: int, b: dict, args) -> None:
    """The transfer floor: the bare server sending our warm get_all_records bytes."""
    client = Client(bare_port)
    for proto, path, ctype in (("xml", "/all.xml", "text/xml"),
                               ("json", "/all.json", "application/json")):
        times = []
        for _ in range(args.repeat):
            data, _, t = client.post(path, ctype, b"{}")
            if len(data) != b[f"{proto}_bytes"]:
                raise RuntimeError("bare server sent a different get_all_records body")
            times.append(t)
        b[f"{proto}_floor"] = min(times)
        log(f"{proto} transfer floor (bare server, same {len(data) / 1e6:.1f} MB): "
            f"{', '.join(f'{t:.3f}' for t in times)} s")
    client.close()


def capture_get_record(server, session: str, vm: str) -> tuple[dict, dict]:
    """The requests of (a), and our server's responses to them (checked stable)."""
    client = Client(server.port)
    calls = {
        "xml": ("/", "text/xml", xml_request("VM.get_record", session, vm)),
        "json": ("/jsonrpc", "application/json", json_request("VM.get_record", session, vm)),
    }
    captured: dict[str, tuple[bytes, dict]] = {}
    for proto, (path, ctype, body) in calls.items():
        data, headers, _ = client.post(path, ctype, body)
        again, _, _ = client.post(path, ctype, body)
        if data != again:
            raise RuntimeError(f"{proto} get_record responses differ between calls")
        captured[proto] = (data, headers)
    client.close()
    log(f"captured get_record responses: XML {len(captured['xml'][0])} B, "
        f"JSON {len(captured['json'][0])} B")
    return calls, captured


def bench_get_record(server, bare: subprocess.Popen, bare_port: int, calls: dict,
                     captured: dict, args) -> dict:
    """(a): VM.get_record calls/s, ours against the bare server sending the same bytes."""
    results: dict[str, dict[str, list[dict]]] = {p: {"ours": [], "bare": []} for p in calls}
    for rnd in range(args.rounds):
        for proto, (path, ctype, body) in calls.items():
            expected = len(captured[proto][0])
            for who, port, pid in (("ours", server.port, server.process.pid),
                                   ("bare", bare_port, bare.pid)):
                r = run_load(port, pid, http_request(port, path, ctype, body), expected, args)
                results[proto][who].append(r)
                log(f"round {rnd + 1}/{args.rounds} {proto:4} {who:4}: {r['rate']:8.0f} calls/s"
                    f"  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms"
                    f"  server cpu {r['server_cpu'] * 100:3.0f}%  client cpu {r['client_cpu'] * 100:3.0f}%")
    out = {}
    for proto, by in results.items():
        ours, bare_runs = by["ours"], by["bare"]
        ratios = [o["rate"] / b["rate"] for o, b in zip(ours, bare_runs)]
        # Calls per second of server CPU: what the server code costs per call,
        # whatever the scheduler did to wake-ups (see README).
        eff = [(o["rate"] / o["server_cpu"]) / (b["rate"] / b["server_cpu"])
               for o, b in zip(ours, bare_runs)]
        out[proto] = {
            "ours": ours, "bare": bare_runs, "ratios": ratios, "eff_ratios": eff,
            "ours_rate": statistics.median(r["rate"] for r in ours),
            "bare_rate": statistics.median(r["rate"] for r in bare_runs),
            "ratio": statistics.median(ratios),
            "eff_ratio": statistics.median(eff),
            "ours_cpu_per_call_us": statistics.median(r["server_cpu"] / r["rate"] * 1e6 for r in ours),
            "bare_cpu_per_call_us": statistics.median(r["server_cpu"] / r["rate"] * 1e6 for r in bare_runs),
            "server_cpu": statistics.median(r["server_cpu"] for r in ours),
            "client_cpu": statistics.median(r["client_cpu"] for r in ours),
            "p50_ms": statistics.median(r["p50_ms"] for r in ours),
            "p99_ms": statistics.median(r["p99_ms"] for r in ours),
        }
        log(f"{proto}: ours/bare per round {', '.join(f'{x:.2f}' for x in ratios)}; "
            f"per server CPU-second {', '.join(f'{x:.2f}' for x in eff)}")
    return out


# -----------------------------------------------------------------------------
# report
# -----------------------------------------------------------------------------


def yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def report(a: dict, b: dict, args) -> tuple[str, str]:
    """The console table and the markdown section."""
    today, cpus = _dt.date.today().isoformat(), nproc()
    rows_a = []
    for proto, label in (("xml", "XML-RPC"), ("json", "JSON-RPC")):
        r = a[proto]
        rows_a.append((label, r, r["ratio"] >= GET_RECORD_TARGET))
    rows_b = []
    for proto, label, ref in (("xml", "XML-RPC", "xmlrpc.client.dumps"), ("json", "JSON-RPC", "json.dumps")):
        cold, warm = b[f"{proto}_cold"] / b[f"{proto}_stdlib"], b[f"{proto}_warm"] / b[f"{proto}_stdlib"]
        rows_b.append((proto, label, ref, cold, warm))
    a_ok = all(ok for *_, ok in rows_a)
    xml_cold, xml_warm = rows_b[0][3], rows_b[0][4]
    b_cold_ok, b_warm_ok = xml_cold <= ALL_RECORDS_TARGET, xml_warm <= ALL_RECORDS_TARGET

    lines = [
        "",
        f"RPC layer benchmark: {today}, nproc {cpus}, Python {platform.python_version()}",
        "",
        f"(a) VM.get_record, {args.clients} keep-alive clients, {args.rounds} alternating rounds of "
        f"{args.duration:g} s (+{args.warmup:g} s warm-up); medians",
        f"    {'':9} {'ours/s':>8} {'bare/s':>8} {'ratio':>6} {'>=0.50':>6}   "
        f"{'CPU us/call: ours':>17} {'bare':>5} {'bare/ours':>9}   {'srv cpu':>7} {'cli cpu':>7}",
    ]
    for label, r, ok in rows_a:
        lines.append(
            f"    {label:9} {r['ours_rate']:8.0f} {r['bare_rate']:8.0f} {r['ratio']:6.2f} {yes(ok):>6}   "
            f"{r['ours_cpu_per_call_us']:17.0f} {r['bare_cpu_per_call_us']:5.0f} {r['eff_ratio']:9.2f}   "
            f"{r['server_cpu'] * 100:6.0f}% {r['client_cpu'] * 100:6.0f}%")
    lines += [
        "    ratio: median of the per-round ours/bare ratios; bare/ours: CPU time per call, "
        "server side",
        "",
        f"(b) VM.get_all_records, {b['records']:,} records, client-side send-to-last-byte; "
        f"warm and reference: best of {args.repeat}",
        f"    {'':9} {'size':>8} {'cold s':>7} {'warm s':>7} {'floor s':>7} {'ref s':>7} "
        f"{'cold/ref':>8} {'warm/ref':>8}  reference",
    ]
    for proto, label, ref, cold, warm in rows_b:
        target = (f"target <=1.00: cold {yes(cold <= 1)}, warm {yes(warm <= 1)}"
                  if proto == "xml" else "(no target)")
        lines.append(
            f"    {label:9} {b[proto + '_bytes'] / 1e6:6.1f}MB {b[proto + '_cold']:7.3f} "
            f"{b[proto + '_warm']:7.3f} {b[proto + '_floor']:7.3f} {b[proto + '_stdlib']:7.3f} "
            f"{cold:8.2f} {warm:8.2f}  {ref}  {target}")
    lines += [
        "",
        f"targets met: (a) get_record >= 50% of bare: {yes(a_ok)}; "
        f"(b) get_all_records <= stdlib encoder: cold {yes(b_cold_ok)}, warm {yes(b_warm_ok)}",
        "",
    ]
    console = "\n".join(lines)

    md = [
        SECTION,
        "",
        f"Latest run of `python -m bench.rpc`: {today}, `nproc` = {cpus} ({platform.machine()}), "
        f"Python {platform.python_version()}, SQLite.  Our server, the bare reference server and "
        f"the load generator are separate processes on the same machine.",
        "",
        f"**(a) `VM.get_record`**: {args.clients} concurrent HTTP/1.1 keep-alive connections, one "
        f"call in flight each; {args.rounds} rounds of {args.duration:g} s (after {args.warmup:g} s "
        f"of warm-up), ours and bare alternating; medians.  *Bare* is an aiohttp server whose "
        f"handler returns the same response bytes with the same headers.  *CPU/call* is the "
        f"server process's CPU time per call (less sensitive to scheduling noise than calls/s).",
        "",
        "| protocol | ours calls/s | bare calls/s | ours / bare (median of rounds) | target ≥ 0.50 met | "
        "CPU/call ours | CPU/call bare | bare / ours CPU | per-round ours / bare | "
        "server CPU (ours) | client CPU | p50 / p99 (ours) |",
        "|---|---:|---:|---:|:---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for label, r, ok in rows_a:
        md.append(
            f"| {label} | {r['ours_rate']:.0f} | {r['bare_rate']:.0f} | {r['ratio']:.2f} | {yes(ok)} | "
            f"{r['ours_cpu_per_call_us']:.0f} µs | {r['bare_cpu_per_call_us']:.0f} µs | "
            f"{r['eff_ratio']:.2f} | {', '.join(f'{x:.2f}' for x in r['ratios'])} | "
            f"{r['server_cpu'] * 100:.0f}% | {r['client_cpu'] * 100:.0f}% | "
            f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f} ms |")
    md += [
        "",
        f"**(b) `VM.get_all_records`** on {b['records']:,} VMs ({args.vms:,} written by the "
        f"benchmark, the rest by first boot): client-side time from sending the "
        f"request to reading the last byte (parsing excluded).  *Cold* is the first call after "
        f"the server started (no record encoded yet), *warm* the best of {args.repeat} repeats.  "
        f"The reference is the stdlib encoder alone, in the benchmark process, on the same "
        f"records as the stdlib client parses them, best of {args.repeat}.  *Transfer floor* "
        f"is the bare aiohttp server sending our warm response bytes to the same client "
        f"(best of {args.repeat}): the part of our time no encoder can remove.",
        "",
        "| protocol | response | cold s | warm s | transfer floor s | reference | reference s | "
        "cold / ref | warm / ref | target ≤ 1.00 met |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|:---:|",
    ]
    for proto, label, ref, cold, warm in rows_b:
        target = f"cold {yes(cold <= 1)}, warm {yes(warm <= 1)}" if proto == "xml" else "(no target)"
        md.append(
            f"| {label} | {b[proto + '_bytes'] / 1e6:.1f} MB | {b[proto + '_cold']:.3f} | "
            f"{b[proto + '_warm']:.3f} | {b[proto + '_floor']:.3f} | `{ref}` "
            f"({b[proto + '_stdlib_bytes'] / 1e6:.1f} MB) | {b[proto + '_stdlib']:.3f} | "
            f"{cold:.2f} | {warm:.2f} | {target} |")
    md += [
        "",
        f"Targets met: (a) {yes(a_ok)}; (b) cold {yes(b_cold_ok)}, warm {yes(b_warm_ok)}.",
        "",
    ]
    return console, "\n".join(md)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rpc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=10_000, help="VMs for get_all_records (10000)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent connections (8)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per run (5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per run (1)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating ours/bare rounds for get_record; medians kept (3)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="warm get_all_records calls and stdlib encodings; best kept (3)")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/performance.md")
    parser.add_argument("--keep", action="store_true", help="keep the state directory")
    args = parser.parse_args(argv)

    from tests.support import ROOT_PASSWORD, start_server

    started = time.perf_counter()
    state_dir = tempfile.mkdtemp(prefix="bench-rpc-")
    db_url = f"sqlite:///{state_dir}/xapi.db"
    log(f"writing {args.vms} VMs into {db_url}")
    populate_s = populate(db_url, args.vms)
    log(f"  done in {populate_s:.1f} s; starting the server")
    server = start_server(state_dir=state_dir)
    try:
        client = Client(server.port)
        t0 = time.perf_counter()
        while True:  # start_server returns once the port accepts; wait for the first answer
            try:
                session = client.xml("session.login_with_password", "root", ROOT_PASSWORD,
                                     "1.0", "bench.rpc")
                break
            except (ConnectionError, http.client.HTTPException):
                if time.perf_counter() - t0 > 60:
                    raise
                client.close()
                time.sleep(0.2)
                client = Client(server.port)
        client.close()
        b, bodies = bench_all_records(server, session, args)
        if b["records"] < args.vms:
            raise RuntimeError(f"expected at least {args.vms} VMs, got {b['records']}")
        probe = Client(server.port)
        vm = probe.xml("VM.get_by_name_label", session, "bench-vm-00000")[0]
        probe.close()
        calls, captured = capture_get_record(server, session, vm)
        bare, bare_port, spec_dir = start_bare({
            "/": captured["xml"], "/jsonrpc": captured["json"],
            "/all.xml": bodies["xml"], "/all.json": bodies["json"],
        })
        del bodies
        try:
            bench_floor(bare_port, b, args)
            a = bench_get_record(server, bare, bare_port, calls, captured, args)
        finally:
            stop(bare, 10)
            shutil.rmtree(spec_dir, ignore_errors=True)
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(state_dir, ignore_errors=True)
        else:
            log(f"state kept in {state_dir}")
    console, section = report(a, b, args)
    publish(console, SECTION, section, not args.no_docs)
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_bare":
        bare_main(int(sys.argv[2]), sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "_load":
        load_main(sys.argv[2:])
    else:
        raise SystemExit(main())
