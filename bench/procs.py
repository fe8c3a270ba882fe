"""What the benchmarks read about processes from /proc (Linux): CPU time, other benchmarks."""

from __future__ import annotations

import os
import subprocess
import sys
import time


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    # after "pid (comm)": state is fields[0], utime is field 14 -> index 11
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen | None, timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``; reaped either way."""
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def other_benchmarks(this: str) -> list[str]:
    """Command lines of running ``python -m bench.<x>`` other than module ``this``
    (whose own helper processes, ``-m bench.<this> _…``, do not count)."""
    found = []
    mine = {os.getpid(), os.getppid()}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in mine:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        for i, arg in enumerate(argv[:-1]):
            module = argv[i + 1]
            if arg == b"-m" and module.startswith(b"bench.") and module != this.encode():
                found.append(b" ".join(argv).decode(errors="replace").strip())
                break
    return found


def wait_for_other_benchmarks(this: str, max_wait: float) -> None:
    """Wait while another benchmark runs: two on one machine spoil each other's figures."""
    deadline = time.monotonic() + max_wait
    said = 0.0
    while others := other_benchmarks(this):
        if time.monotonic() > deadline:
            raise SystemExit(f"another benchmark is still running ({others[0]}); "
                             "not measuring (use --no-wait to measure anyway)")
        if time.monotonic() - said > 30:
            print(f"[bench] waiting for another benchmark to finish: {others[0]}",
                  file=sys.stderr, flush=True)
            said = time.monotonic()
        time.sleep(2)
