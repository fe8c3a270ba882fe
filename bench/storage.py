"""Benchmark of storage (issue 5): run ``python -m bench.storage``.

Not a timed test: it prints figures and compares them with the targets.

On a fresh server (its own state directory and SQLite database, the file SR
that first boot makes as the default SR, the server's own storage GC switched
off so that it does not run in the middle of a measurement):

(1) A ``--size`` (10 GiB) VDI is made with ``VDI.create`` and ``--written``
    (1 GiB) of random data is written into it as a VM would (``vhd.open`` of
    the volume file), in 2 MiB blocks scattered over the whole disk.

(2) Snapshot and clone: ``VDI.snapshot`` / ``VDI.clone`` of that VDI through
    the XenAPI (XML-RPC, ``XenAPI.Session``), timed end to end on the client,
    ``--repeat`` (7) times each; the median is compared with the target.
    Between two calls the new VDI is destroyed and the storage GC run (not
    timed), so every call starts from the same one-file disk.  Bytes on disk
    of the SR directory (allocated blocks, hard links counted once) before
    and after the first call.  Targets: <= 50 ms each.

(3) Coalesce throughput: ``VDI.snapshot``, another ``--written`` of data
    written into the VDI (the VM runs on), ``VDI.destroy`` of the snapshot:
    the VDI's leaf (holding the new data) is now its hidden parent's only
    child, and the storage GC (``workers.storage_gc.SrCollector``, the code
    the server runs every ``storage_gc_interval``, run here in the benchmark
    process) leaf-coalesces it: pause, lock, ``vhd.coalesce_into_parent``,
    the commit renames, unpause.  MB/s = data merged / the GC pass's wall
    time (every plugin call of the pass included), ``--rounds`` (3) rounds,
    median.  The reference is ``cp`` of a ``--written`` file of random data
    on the same filesystem, one per round, the two alternating in order.
    Caches cannot be dropped here (no root over the VM's page cache), so both
    run warm, from the same state: the source was just written (the VM's
    data for the GC, a fresh file for ``cp``), then ``sync`` (no writeback
    pending, the page cache kept), then ``--prefault`` bytes of memory are
    touched and freed, then the copy.  Why the last step: in a VM with
    virtio-balloon free page reporting (the Firecracker VM these figures were
    first taken on boots with ``page_reporting.page_reporting_order=11``),
    memory the guest frees is handed back to the host, and page-cache writes
    into it fault on the host again -- there, plain 1 GiB file writes went
    from 0.25 s to ~3 s after a few GiB of writes, while ``sync`` stayed
    ~0.3 s.  Which copy pays that is a matter of order, not of code; touching
    the memory just before (freed pages are reported after ~2 s) lets both
    write into backed pages.  The report says whether page reporting is on.
    ``cp`` does
    not ``fsync``; the GC must (the rename that commits a merge may only
    reach the disk after the merged data), so ``cp`` + ``fsync`` is shown as
    well.  Target: the GC at least 50% of ``cp``'s rate.  One more round
    measures an *interior* coalesce (the older of two snapshots deleted: the
    base in the middle is merged without the SR lock) for information.

Breakdown (always printed): each GC pass is split into the copy
(``coalesce_into_parent``, its final ``fsync`` shown apart), the commit
renames, the deletion of the replaced leaf, the plugin calls it made and the
rest; the latency of each plugin call the snapshot handler makes is measured
directly (median of ``--repeat``), through the plugin registry's fork server
(as the server runs the project's plugins) and as a process per call, next
to the bare interpreter start (``python -c pass``, ``python -S -c pass``).
When a target is missed, the report names the hotspots.

The latest figures go to docs/performance.md, section "Storage (issue 5)".
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time

from bench.procs import wait_for_other_benchmarks
from bench.report import REPO, publish

SECTION = "## Storage (issue 5)"
MiB = 1024 * 1024
GiB = 1024 * MiB
BLOCK = 2 * MiB
SNAPSHOT_TARGET_MS = 50.0
CLONE_TARGET_MS = 50.0
COALESCE_TARGET = 0.5          # GC MB/s / cp MB/s, at least

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def loud(msg: str) -> None:
    bar = "!" * 78
    print(f"\n{bar}\n!!! {msg}\n{bar}\n", file=sys.stderr, flush=True)


def yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def nproc() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def code_version() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
             ":!docs/performance.md"],
            cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + (" with uncommitted changes" if dirty else "")


def page_reporting() -> bool:
    """Whether freed guest memory is reported to a hypervisor (virtio-balloon)."""
    try:
        with open("/proc/cmdline") as f:
            cmdline = f.read()
    except OSError:
        cmdline = ""
    return os.path.isdir("/sys/bus/virtio/drivers/virtio_balloon") and "page_reporting" in cmdline


def disk_bytes(directory: str) -> tuple[int, int]:
    """(allocated, apparent) bytes of the files under ``directory``; a file
    with several names counts once."""
    seen: set[tuple[int, int]] = set()
    allocated = apparent = 0
    for root, _, files in os.walk(directory):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            allocated += st.st_blocks * 512
            apparent += st.st_size
    return allocated, apparent


def human(n: float) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


# -----------------------------------------------------------------------------
# instrumentation of the GC pass (it runs in this process)
# -----------------------------------------------------------------------------


class Meter:
    """Wall time spent in the copy, in fsync and in plugin calls, by name."""

    def __init__(self):
        from xapi.backends.storage import plugins, vhd

        self.copy = 0.0
        self.fsync = 0.0
        self.rename = 0.0
        self.free = 0.0
        self.calls: dict[str, list[float]] = {}
        self._vhd, self._plugins = vhd, plugins
        self._coalesce = vhd.coalesce_into_parent
        self._call_with = plugins.Plugin.call_with
        self._fsync = os.fsync
        self._replace, self._rename = os.replace, os.rename
        self._unlink = os.unlink

    def __enter__(self) -> "Meter":
        meter = self

        def coalesce(*args, **kwargs):
            t = time.perf_counter()
            try:
                return meter._coalesce(*args, **kwargs)
            finally:
                meter.copy += time.perf_counter() - t

        def fsync(fd):
            t = time.perf_counter()
            try:
                return meter._fsync(fd)
            finally:
                meter.fsync += time.perf_counter() - t

        def timed_rename(real):
            def rename(*args, **kwargs):
                t = time.perf_counter()
                try:
                    return real(*args, **kwargs)
                finally:
                    meter.rename += time.perf_counter() - t
            return rename

        def unlink(*args, **kwargs):
            t = time.perf_counter()
            try:
                return meter._unlink(*args, **kwargs)
            finally:
                meter.free += time.perf_counter() - t

        def call_with(plugin, method, params, *, timeout=None):
            t = time.perf_counter()
            try:
                return meter._call_with(plugin, method, params, timeout=timeout)
            finally:
                meter.calls.setdefault(method, []).append(time.perf_counter() - t)

        self._vhd.coalesce_into_parent = coalesce
        os.fsync = fsync
        os.replace, os.rename = timed_rename(self._replace), timed_rename(self._rename)
        os.unlink = unlink
        self._plugins.Plugin.call_with = call_with
        return self

    def __exit__(self, *exc) -> None:
        self._vhd.coalesce_into_parent = self._coalesce
        os.fsync = self._fsync
        os.replace, os.rename = self._replace, self._rename
        os.unlink = self._unlink
        self._plugins.Plugin.call_with = self._call_with

    @property
    def plugin_seconds(self) -> float:
        return sum(sum(v) for v in self.calls.values())

    def call_summary(self) -> str:
        return ", ".join(f"{m} ×{len(v)} {sum(v) * 1000:.0f} ms"
                         for m, v in sorted(self.calls.items(), key=lambda kv: -sum(kv[1])))


# -----------------------------------------------------------------------------
# the benchmark
# -----------------------------------------------------------------------------


class Bench:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.pool = os.urandom(64 * MiB)
        self.pool_at = 0
        self.expected: dict[int, bytes] = {}        # block -> what the VDI holds there

    # -- set-up -------------------------------------------------------------------------

    def start(self) -> None:
        import XenAPI

        from tests import support
        from xapi.backends.storage.plugins import PluginRegistry

        self.support = support
        self.state_dir = tempfile.mkdtemp(prefix="bench-storage-", dir=self.args.dir)
        log(f"starting a server in {self.state_dir} (storage GC off: the benchmark runs it)")
        self.srv = support.start_server(state_dir=self.state_dir, storage_gc_interval=0)
        self.session = XenAPI.Session(self.srv.url + "/")
        self.session.login_with_password("root", support.ROOT_PASSWORD, "1.0", "bench-storage")
        x = self.x = self.session.xenapi
        self.sr = x.pool.get_default_SR(x.pool.get_all()[0])
        self.sr_path = x.PBD.get_device_config(x.SR.get_PBDs(self.sr)[0])["path"]
        self.registry = PluginRegistry()
        self.plugin = self.registry.volume("file")
        self.sr_uri = self.plugin.call("SR.attach", configuration={"path": self.sr_path})
        self.gc_dir = os.path.join(self.state_dir, "bench-gc")
        self.fs_type = subprocess.run(["stat", "-f", "-c", "%T", self.sr_path],
                                      capture_output=True, text=True).stdout.strip() or "?"

    def stop(self) -> None:
        try:
            self.session.logout()
        except Exception:  # noqa: BLE001
            pass
        self.srv.stop(keep_state=self.args.keep)
        if self.args.keep:
            log(f"kept {self.state_dir}")

    def chunk(self) -> bytes:
        at = self.pool_at
        self.pool_at = (self.pool_at + BLOCK) % (len(self.pool) - BLOCK)
        return self.pool[at:at + BLOCK]

    def leaf_path(self) -> str:
        return os.path.join(self.sr_path, self.x.VDI.get_location(self.vdi) + ".vhd")

    def write(self, nbytes: int) -> dict[int, bytes]:
        """Write ``nbytes`` into the VDI in 2 MiB blocks at random places, as a
        VM would; returns block -> data."""
        from xapi.backends.storage import vhd

        blocks = self.rng.sample(range(self.args.size // BLOCK), nbytes // BLOCK)
        written = {}
        with vhd.open(self.leaf_path(), writable=True) as disk:
            for b in blocks:
                data = self.chunk()
                disk.write(b * BLOCK, data)
                written[b] = data
        self.expected.update(written)
        return written

    def verify(self, written: dict[int, bytes], sample: int = 32) -> None:
        """Some of ``written`` and some older blocks read back unchanged."""
        from xapi.backends.storage import vhd

        picks = self.rng.sample(sorted(written), min(sample, len(written)))
        picks += self.rng.sample(sorted(self.expected), min(sample, len(self.expected)))
        with vhd.open(self.leaf_path()) as disk:
            for b in picks:
                if disk.read(b * BLOCK, BLOCK) != self.expected[b]:
                    raise SystemExit(f"data of block {b} changed: the GC is broken")

    def gc(self):
        from workers.storage_gc import SrCollector

        report = SrCollector(self.registry, self.plugin, self.sr_uri, self.gc_dir, "bench").run()
        if report.error:
            raise SystemExit(f"GC failed: {report.error}")
        return report

    def depth(self) -> int:
        from xapi.backends.storage import vhd

        return len(vhd.chain(self.leaf_path()))

    # -- (1) + (2) ------------------------------------------------------------------------

    def prepare(self) -> None:
        args = self.args
        log(f"VDI.create of {human(args.size)}, writing {human(args.written)}")
        self.vdi = self.x.VDI.create({
            "SR": self.sr, "virtual_size": str(args.size), "name_label": "bench", "type": "user",
            "name_description": "", "sharable": False, "read_only": False, "other_config": {},
            "xenstore_data": {}, "sm_config": {}, "tags": []})
        t = time.perf_counter()
        self.write(args.written)
        self.write_seconds = time.perf_counter() - t

    def snapshot_or_clone(self, op: str) -> dict:
        x = self.x
        call = x.VDI.snapshot if op == "snapshot" else x.VDI.clone
        x.VDI.get_record(self.vdi)                  # connection and session warm
        times, before, after = [], None, None
        for i in range(self.args.repeat):
            if i == 0:
                before = disk_bytes(self.sr_path)
            t = time.perf_counter()
            new = call(self.vdi, {})
            times.append(time.perf_counter() - t)
            if i == 0:
                after = disk_bytes(self.sr_path)
                depth = self.depth()
            x.VDI.destroy(new)
            self.gc()                               # back to a one-file disk
        log(f"VDI.{op}: median {statistics.median(times) * 1000:.1f} ms "
            f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f})")
        return {"op": op, "times": times, "median": statistics.median(times),
                "before": before, "after": after, "depth": depth}

    # -- (3) ---------------------------------------------------------------------------------

    def prefault(self) -> float:
        """Touch ``--prefault`` bytes of fresh memory and free them again: the
        next page-cache writes then land in guest memory the host has backed
        (see the module docstring); returns the seconds it took."""
        if not self.args.prefault:
            return 0.0
        t = time.perf_counter()
        block = b"\x01" * self.args.prefault
        del block
        return time.perf_counter() - t

    def cp(self) -> dict:
        """``cp`` of a file just written (as the VM's data is when the GC runs)."""
        src = os.path.join(self.state_dir, "cp-source.bin")
        dst = os.path.join(self.state_dir, "cp-copy.bin")
        with open(src, "wb") as f:
            for _ in range(self.args.written // BLOCK):
                f.write(self.chunk())
        os.sync()                                    # warm and clean, as the GC's source
        prefault = self.prefault()
        t = time.perf_counter()
        subprocess.run(["cp", src, dst], check=True)
        plain = time.perf_counter() - t
        fd = os.open(dst, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        synced = time.perf_counter() - t
        os.unlink(dst)
        os.unlink(src)
        return {"seconds": plain, "synced": synced, "prefault": prefault}

    def leaf_round(self, profile: bool = False) -> dict:
        x = self.x
        snap = x.VDI.snapshot(self.vdi, {})
        written = self.write(self.args.written)
        x.VDI.destroy(snap)
        depth = self.depth()
        before = disk_bytes(self.sr_path)
        os.sync()              # what the VM wrote is in the page cache, clean: as cp's source
        self.prefault()
        profiler = None
        if profile:
            import cProfile
            profiler = cProfile.Profile()
        with Meter() as meter:
            t = time.perf_counter()
            if profiler:
                profiler.enable()
            report = self.gc()
            if profiler:
                profiler.disable()
            seconds = time.perf_counter() - t
        after = disk_bytes(self.sr_path)
        if report.leaf_coalesced != [x.VDI.get_location(self.vdi)] or self.depth() != 1:
            raise SystemExit(f"the GC did not leaf-coalesce the VDI: {report}")
        self.verify(written)
        return {"seconds": seconds, "bytes": report.bytes, "data": len(written) * BLOCK,
                "copy": meter.copy, "fsync": meter.fsync, "plugin": meter.plugin_seconds,
                "rename": meter.rename, "free": meter.free, "calls": meter.call_summary(),
                "before": before,
                "after": after,
                "depth": depth, "profiler": profiler}

    def interior_round(self) -> dict:
        x = self.x
        s1 = x.VDI.snapshot(self.vdi, {})
        written = self.write(self.args.written)
        s2 = x.VDI.snapshot(self.vdi, {})
        x.VDI.destroy(s1)
        os.sync()
        self.prefault()
        with Meter() as meter:
            t = time.perf_counter()
            report = self.gc()
            seconds = time.perf_counter() - t
        if len(report.coalesced) != 1:
            raise SystemExit(f"the GC did not coalesce the interior node: {report}")
        self.verify(written)
        x.VDI.destroy(s2)
        self.gc()
        return {"seconds": seconds, "bytes": report.bytes, "data": len(written) * BLOCK,
                "copy": meter.copy, "fsync": meter.fsync, "plugin": meter.plugin_seconds,
                "calls": meter.call_summary()}

    def coalesce(self) -> dict:
        rounds, cps = [], []
        for r in range(self.args.rounds):
            # alternate which goes first: the one after the other's writes may differ
            for what in (("cp", "gc") if r % 2 == 0 else ("gc", "cp")):
                if what == "cp":
                    cps.append(self.cp())
                    log(f"cp of {human(self.args.written)}: {cps[-1]['seconds']:.2f} s "
                        f"(+ fsync {cps[-1]['synced'] - cps[-1]['seconds']:.2f} s)")
                    continue
                rounds.append(self.leaf_round())
                res = rounds[-1]
                log(f"GC leaf-coalesce round {r + 1}: {human(res['data'])} merged in "
                    f"{res['seconds']:.2f} s (copy {res['copy']:.2f} s of which fsync "
                    f"{res['fsync']:.2f} s; plugin calls {res['plugin']:.2f} s)")
        interior = self.interior_round()
        log(f"GC interior coalesce: {human(interior['data'])} merged in {interior['seconds']:.2f} s")
        return {"rounds": rounds, "cp": cps, "interior": interior}

    # -- where the time goes -------------------------------------------------------------

    def plugin_latency(self) -> dict:
        """Median latency of plugin calls, measured directly: through the
        registry's fork server (as the server runs the project's plugins) and
        as a process per call (``preload=False``, as any other plugin runs)."""
        from xapi.backends.storage.plugins import PluginRegistry

        key = self.x.VDI.get_location(self.vdi)
        out: dict[str, dict[str, float]] = {}
        for mode, preload in (("fork server", True), ("a process per call", False)):
            registry = PluginRegistry(preload=preload)
            plugin = registry.volume("file")
            plugin.call("SR.stat", sr=self.sr_uri)  # starts the fork server
            row: dict[str, float] = {}
            for method, params in (("Volume.snapshot", {"key": key}), ("Volume.stat", {"key": key}),
                                   ("SR.stat", {}), ("SR.tree", {})):
                times = []
                for _ in range(self.args.repeat):
                    t = time.perf_counter()
                    result = plugin.call(method, sr=self.sr_uri, **params)
                    times.append(time.perf_counter() - t)
                    if method == "Volume.snapshot":
                        plugin.call("Volume.destroy", sr=self.sr_uri, key=result["key"])
                row[method] = statistics.median(times)
            registry.close()
            out[mode] = row
        for label, argv in (("python -c pass", ["-c", "pass"]),
                            ("python -S -c pass", ["-S", "-c", "pass"])):
            times = []
            for _ in range(self.args.repeat):
                t = time.perf_counter()
                subprocess.run([sys.executable, *argv], check=True)
                times.append(time.perf_counter() - t)
            out[label] = statistics.median(times)
        self.gc()                      # the snapshots above left a chain
        # SR.scan so the server's records match what the GC did outside it
        self.x.SR.scan(self.sr)
        return out


# -----------------------------------------------------------------------------
# report
# -----------------------------------------------------------------------------


def top_functions(profiler, n: int = 8) -> list[str]:
    import pstats

    stats = pstats.Stats(profiler)
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:n]
    out = []
    for (filename, line, name), (_, calls, tottime, cumtime, _) in rows:
        where = name if filename == "~" else f"{os.path.relpath(filename, REPO)}:{line}({name})"
        out.append(f"{tottime * 1000:.0f} ms self in {calls} calls: {where}")
    return out


def report(args, bench: Bench, snaps: dict, coal: dict, lat: dict,
           profile_lines: list[str]) -> tuple[str, str, bool]:
    snap, clone = snaps["snapshot"], snaps["clone"]
    rounds, cps, interior = coal["rounds"], coal["cp"], coal["interior"]
    last = rounds[-1]
    rest = last["seconds"] - last["copy"] - last["rename"] - last["free"] - last["plugin"]
    gc_rates = [r["data"] / r["seconds"] / 1e6 for r in rounds]
    copy_rates = [r["data"] / r["copy"] / 1e6 for r in rounds]
    cp_rates = [args.written / c["seconds"] / 1e6 for c in cps]
    cps_rates = [args.written / c["synced"] / 1e6 for c in cps]
    gc_rate, copy_rate = statistics.median(gc_rates), statistics.median(copy_rates)
    cp_rate, cps_rate = statistics.median(cp_rates), statistics.median(cps_rates)
    ratio = gc_rate / cp_rate
    snap_ok = snap["median"] * 1000 <= SNAPSHOT_TARGET_MS
    clone_ok = clone["median"] * 1000 <= CLONE_TARGET_MS
    coal_ok = ratio >= COALESCE_TARGET
    interior_rate = interior["data"] / interior["seconds"] / 1e6
    dwb = os.environ.get("PYTHONDONTWRITEBYTECODE")
    lat_fork, lat_proc = lat["fork server"], lat["a process per call"]
    # VDI.snapshot: Volume.snapshot, then Volume.stat and SR.stat side by side
    handler_fork = lat_fork["Volume.snapshot"] + max(lat_fork["Volume.stat"], lat_fork["SR.stat"])
    ms = lambda s: f"{s * 1000:.1f} ms"  # noqa: E731

    def disk_row(r: dict) -> str:
        (a0, s0), (a1, s1) = r["before"], r["after"]
        change = ("+" if a1 >= a0 else "−") + human(abs(a1 - a0))
        return (f"{human(a0)} → {human(a1)} ({change}); apparent "
                f"{human(s0)} → {human(s1)}")

    today = _dt.date.today().isoformat()
    fs = bench.fs_type
    header = (f"Latest run of `python -m bench.storage`: {today}, `nproc` = {nproc()} "
              f"({platform.machine()}), Python {platform.python_version()}, code at "
              f"{code_version()}, SQLite; the SR directory is on `{fs}` (what `stat -f` "
              "calls ext4 too).")
    if dwb:
        header += (f"  This environment sets `PYTHONDONTWRITEBYTECODE={dwb}`, which the "
                   "server and its plugin processes inherit.")
    md = [SECTION, "", header, "",
          f"**(1)+(2) Snapshot and clone** of a {human(args.size)} VDI with "
          f"{human(args.written)} written (2 MiB blocks scattered over the disk), "
          f"`VDI.snapshot` / `VDI.clone` over XML-RPC, timed on the client; "
          f"{args.repeat} calls each, every one from the same one-file disk (the new VDI "
          "destroyed and the GC run in between).  Bytes on disk: the SR directory's "
          "allocated blocks before and after the first call.",
          "",
          "| call | median | min | max | target | met | SR bytes on disk before → after | "
          "chain after |",
          "|---|---:|---:|---:|---:|:---:|---|---:|"]
    for r, target, ok in ((snap, SNAPSHOT_TARGET_MS, snap_ok), (clone, CLONE_TARGET_MS, clone_ok)):
        md.append(f"| `VDI.{r['op']}` | {ms(r['median'])} | {ms(min(r['times']))} | "
                  f"{ms(max(r['times']))} | ≤ {target:g} ms | **{yes(ok)}** | {disk_row(r)} | "
                  f"{r['depth']} files |")
    md += ["",
           f"**(3) Coalesce throughput**: `VDI.snapshot`, {human(args.written)} more written "
           "into the VDI, `VDI.destroy` of the snapshot; then one pass of the storage GC "
           "(`workers.storage_gc.SrCollector`, the code `run_pass` runs for each SR) "
           "leaf-coalesces the VDI live: `Datapath.pause`, SR lock, "
           "`vhd.coalesce_into_parent`, commit renames, `Datapath.unpause`.  *GC pass* "
           "rate = data merged / wall time of the whole pass, plugin calls included; "
           "*copy* = `coalesce_into_parent` alone (its final `fsync` included).  The "
           f"reference is `cp` of a {human(args.written)} file on the same filesystem.  "
           "Caches cannot be dropped here, so **both run warm**, from the same state: the "
           "source just written (the VM's data; a fresh file for `cp`), `sync`, then "
           f"{human(args.prefault)} of memory touched and freed, then the copy.  "
           + ("The last step matters here: this machine is a VM with virtio-balloon free "
              "page reporting (`page_reporting` on the kernel command line), freed guest "
              "memory goes back to the host and page-cache writes into it fault again "
              "(plain 1 GiB file writes were seen to slow from 0.25 s to ~3 s after a few "
              "GiB of writes, `sync` staying ~0.3 s), so without it the copy that runs "
              "second loses, whichever it is.  " if page_reporting() else
              "(That step matters on VMs with free page reporting; this machine has none.)  ")
           + "`cp` does not `fsync`; the GC must (a commit may only reach the disk "
           f"after the merged data), hence `cp`+`fsync` too.  {args.rounds} rounds, `cp` "
           "and the GC alternating in order; medians.",
           "",
           "| | median MB/s | per round | vs `cp` |",
           "|---|---:|---|---:|",
           f"| GC pass (leaf-coalesce) | {gc_rate:.0f} | "
           f"{', '.join(f'{v:.0f}' for v in gc_rates)} | **{ratio:.2f}** |",
           f"| of which the copy | {copy_rate:.0f} | "
           f"{', '.join(f'{v:.0f}' for v in copy_rates)} | {copy_rate / cp_rate:.2f} |",
           f"| `cp` (warm) | {cp_rate:.0f} | {', '.join(f'{v:.0f}' for v in cp_rates)} | 1.00 |",
           f"| `cp` + `fsync` | {cps_rate:.0f} | "
           f"{', '.join(f'{v:.0f}' for v in cps_rates)} | {cps_rate / cp_rate:.2f} |",
           f"| GC pass (interior coalesce, no SR lock), 1 round | {interior_rate:.0f} | – | "
           f"{interior_rate / cp_rate:.2f} |",
           "",
           f"Target: GC ≥ {COALESCE_TARGET:.0%} of `cp`'s rate: **{yes(coal_ok)}** "
           f"({ratio:.2f}).  Bytes on disk around the last leaf-coalesce: "
           f"{disk_row(rounds[-1])}; chain {rounds[-1]['depth']} → 1 files.",
           "",
           "**Where the time goes.**  A GC pass, last leaf round: "
           f"{last['seconds']:.2f} s = copy {last['copy'] - last['fsync']:.2f} s + its `fsync` "
           f"{last['fsync']:.2f} s + commit renames {last['rename']:.2f} s + deleting the "
           f"replaced {human(args.written)} leaf {last['free']:.2f} s (from a thread started "
           f"at the commit) + plugin calls {last['plugin']:.2f} s ({last['calls']}) + the rest "
           f"{rest:.2f} s (the deletion overlaps the last plugin calls, so the parts may add "
           "up to a little more than the pass).",
           "",
           "`VDI.snapshot` (and `VDI.clone`) make three plugin calls: `Volume.snapshot`, "
           "then `Volume.stat` (the source VDI's new size and `vhd-parent`) and `SR.stat` "
           "(the SR's sizes) side by side; the new VDI's `vhd-parent` comes with the "
           "volume `Volume.snapshot` returns.  The server runs the project's Python "
           "plugins through a fork server that has imported their modules once "
           "(`xapi/backends/storage/launcher.py`): still a process per call running the "
           "method's executable with JSON on stdin.  Each call measured directly (median "
           f"of {args.repeat}); *handler's calls* = `Volume.snapshot` + the slower of the "
           "other two:",
           "",
           "| plugin processes | Volume.snapshot | Volume.stat | SR.stat | SR.tree | "
           "handler's calls |",
           "|---|---:|---:|---:|---:|---:|"]
    for mode, row in (("fork server (the server's way)", lat_fork),
                      ("a process per call", lat_proc)):
        calls = row["Volume.snapshot"] + max(row["Volume.stat"], row["SR.stat"])
        md.append(f"| {mode} | {ms(row['Volume.snapshot'])} | {ms(row['Volume.stat'])} | "
                  f"{ms(row['SR.stat'])} | {ms(row['SR.tree'])} | {ms(calls)} |")
    md += ["",
           f"For scale: `python -c pass` {ms(lat['python -c pass'])}, `python -S -c pass` "
           f"{ms(lat['python -S -c pass'])}"
           + (f" (this environment sets `PYTHONDONTWRITEBYTECODE={dwb}`: a process per call "
              "compiles the plugin's modules every time)." if dwb else "."),
           ""]
    if not (snap_ok and clone_ok):
        md += ["**Snapshot/clone target missed.**  The handler's plugin calls take "
               f"≈{handler_fork * 1000:.0f} ms of the {snap['median'] * 1000:.0f} ms median; "
               "`Volume.snapshot` itself is mostly `fsync`s (journal, the new files and "
               "directory before the commit, the hidden base after it); the rest is the "
               "server's own work (operation marking, the database, XML-RPC).",
               ""]
    if not coal_ok:
        copy_only = args.written / (last["copy"] - last["fsync"]) / 1e6
        md += ["**Coalesce target missed** against plain `cp` "
               f"({ratio:.2f}); against `cp`+`fsync`, the same durability as the GC, the "
               f"ratio is {gc_rate / cps_rate:.2f}.  Hotspots, from the split above and a "
               "cProfile of one more GC round (own time):", ""]
        md += [f"* {line}" for line in profile_lines]
        md += ["",
               f"The copy itself ran at {copy_only:.0f} MB/s in that round (`cp`: "
               f"{cp_rate:.0f} MB/s median); the rest is work `cp` does not do: the "
               "`fsync` before the commit (a rename reaching the disk before the merged "
               "data could lose the volume on a crash), deleting the replaced leaf (the "
               "space the GC is there to reclaim) and four plugin calls per pass.",
               ""]
    md.append(f"Targets met: snapshot {yes(snap_ok)}, clone {yes(clone_ok)}, "
              f"coalesce {yes(coal_ok)}.")
    md.append("")

    console = [
        "",
        f"VDI.snapshot  median {ms(snap['median'])}  (target ≤ {SNAPSHOT_TARGET_MS:g} ms: "
        f"{yes(snap_ok)}, ratio {snap['median'] * 1000 / SNAPSHOT_TARGET_MS:.1f}× the target)",
        f"VDI.clone     median {ms(clone['median'])}  (target ≤ {CLONE_TARGET_MS:g} ms: "
        f"{yes(clone_ok)}, ratio {clone['median'] * 1000 / CLONE_TARGET_MS:.1f}× the target)",
        f"  SR bytes on disk, snapshot: {disk_row(snap)}",
        f"  SR bytes on disk, clone:    {disk_row(clone)}",
        f"GC leaf-coalesce {gc_rate:.0f} MB/s (copy alone {copy_rate:.0f} MB/s) vs cp "
        f"{cp_rate:.0f} MB/s (cp+fsync {cps_rate:.0f}): ratio {ratio:.2f} "
        f"(target ≥ {COALESCE_TARGET:.2f}: {yes(coal_ok)})",
        f"GC interior coalesce {interior_rate:.0f} MB/s",
        f"  last round: {last['seconds']:.2f} s = copy {last['copy'] - last['fsync']:.2f} + "
        f"fsync {last['fsync']:.2f} + renames {last['rename']:.2f} + free {last['free']:.2f} "
        f"+ plugin calls {last['plugin']:.2f} ({last['calls']}) + rest {rest:.2f}",
        f"plugin calls of VDI.snapshot (fork server) ≈ {ms(handler_fork)}",
    ]
    if profile_lines:
        console += ["GC hotspots:"] + [f"  {line}" for line in profile_lines]
    return "\n".join(console), "\n".join(md), snap_ok and clone_ok and coal_ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.storage",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=10 * GiB, help="VDI size in bytes (10 GiB)")
    parser.add_argument("--written", type=int, default=GiB,
                        help="bytes written before a snapshot / merged by a coalesce (1 GiB)")
    parser.add_argument("--repeat", type=int, default=7,
                        help="calls per snapshot/clone figure and per plugin latency (7)")
    parser.add_argument("--rounds", type=int, default=3, help="leaf-coalesce rounds (3)")
    parser.add_argument("--prefault", type=int, default=None,
                        help="bytes of memory touched right before each measured copy "
                             "(default: 2 x --written + 512 MiB; 0: none)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", default=None,
                        help="where the server's state (and its SR) goes (default: $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the state directory")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/performance.md")
    parser.add_argument("--no-wait", action="store_true",
                        help="do not wait for other running benchmarks (bench.*)")
    args = parser.parse_args(argv)
    args.written -= args.written % BLOCK
    if args.prefault is None:
        args.prefault = 2 * args.written + 512 * MiB
    if not args.no_wait:
        wait_for_other_benchmarks("bench.storage", 1800)
    started = time.perf_counter()
    bench = Bench(args)
    bench.start()
    try:
        bench.prepare()
        snaps = {op: bench.snapshot_or_clone(op) for op in ("snapshot", "clone")}
        coal = bench.coalesce()
        lat = bench.plugin_latency()
        cp_rate = statistics.median(args.written / c["seconds"] for c in coal["cp"])
        gc_rate = statistics.median(r["data"] / r["seconds"] for r in coal["rounds"])
        profile_lines: list[str] = []
        if gc_rate / cp_rate < COALESCE_TARGET:
            log("coalesce target missed: profiling one more GC round")
            profile_lines = top_functions(bench.leaf_round(profile=True)["profiler"])
    finally:
        bench.stop()
    console, section, ok = report(args, bench, snaps, coal, lat, profile_lines)
    publish(console, SECTION, section, not args.no_docs)
    if not ok:
        loud("a storage target was missed: see the hotspots above")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
