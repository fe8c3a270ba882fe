"""``xenopsd-sim``: a xenopsd with a simulated hypervisor, on xenopsd's wire protocol.

It keeps xenopsd's generic server behaviour (per-VM operation queues,
operations expanded into xenopsd's micro-ops in xenopsd's order, tasks with
progress and cancellation, the update stream with barriers) over a
hypervisor that only records domains and device states, persisted in
``--state-dir`` so a restart finds running VMs still running.  Every
micro-op is logged (``oplog``); delays and failures can be injected per
micro-op (``faults``).

    python -m xapi.backends.xenops.simulator --socket-dir DIR --state-dir DIR \\
        [--queue NAME] [--log FILE] [--memory-mib N] [--delay SPEC]… [--fail SPEC]…
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from xapi.backends.xenops import protocol as P
from xapi.backends.xenops.simulator.faults import Faults
from xapi.backends.xenops.simulator.hypervisor import ONE_TIB_MIB
from xapi.backends.xenops.simulator.microops import NAMES
from xapi.backends.xenops.simulator.server import Settings, serve


def parse_args(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(prog="xenopsd-sim", description="xenopsd simulator")
    parser.add_argument("--socket-dir", required=True, help="directory of the queue's unix socket")
    parser.add_argument("--state-dir", required=True, help="where VMs, domains and counters are kept")
    parser.add_argument("--queue", default=P.SIMULATOR_QUEUE, help="queue name, i.e. the socket's file name")
    parser.add_argument("--log", dest="log_path", help="micro-op log (default: <state-dir>/microops.log)")
    parser.add_argument("--memory-mib", type=int, default=ONE_TIB_MIB, help="host memory (default 1 TiB)")
    parser.add_argument("--delay", action="append", default=[], metavar="OP[@VM]=SECONDS",
                        help="make a micro-op (* for all) take this long")
    parser.add_argument("--fail", action="append", default=[], metavar="OP[@VM][=ERROR_JSON][#COUNT]",
                        help="make a micro-op fail with an Errors.error")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    args = parser.parse_args(argv)
    faults = Faults(NAMES)
    try:
        for spec in args.delay:
            faults.add_delay_spec(spec)
        for spec in args.fail:
            faults.add_failure_spec(spec)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return Settings(args.socket_dir, args.state_dir, args.queue, args.log_path, args.memory_mib, faults)


async def _run(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(settings, stop)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``xenopsd-sim`` console script."""
    asyncio.run(_run(parse_args(argv)))
