"""The ``xapi`` administration command: serve, db upgrade, passwd."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from xapi import config as config_mod


class CliError(Exception):
    pass


def _config(args) -> config_mod.Config:
    from pydantic import ValidationError

    try:
        return config_mod.load(args.config)
    except (OSError, ValueError) as exc:
        if isinstance(exc, ValidationError):
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            raise CliError(f"bad configuration: {problems}") from None
        raise CliError(f"cannot read configuration: {exc}") from None


def cmd_serve(args) -> int:
    import os

    from .server import run

    cfg = _config(args)
    if args.config:
        os.environ["XAPI_CONFIG"] = args.config  # for the worker it starts, and for restarts
    logging.basicConfig(
        level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        asyncio.run(run(cfg))
    except KeyboardInterrupt:
        pass
    return 0


def cmd_db_upgrade(args) -> int:
    from db.migrate import current
    from db.store import Database

    cfg = _config(args)
    import os

    os.makedirs(cfg.state_dir, exist_ok=True)
    db = Database(cfg.database_url)
    db.upgrade()
    print(f"database at revision {current(db.engine)}")
    db.close()
    return 0


def cmd_passwd(args) -> int:
    from db.store import Database
    from xapi.auth import hash_password
    from xapi.sessions import ROOT

    cfg = _config(args)
    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass("New root password: ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("xapi passwd: empty password refused", file=sys.stderr)
        return 1
    import os

    os.makedirs(cfg.state_dir, exist_ok=True)
    db = Database(cfg.database_url)
    db.upgrade()
    db.set_password_hash(ROOT, hash_password(password))
    db.close()
    print("root password updated")
    return 0


def cmd_worker(args) -> int:
    """A Celery worker for this host's queue (needs redis_url)."""
    import os

    cfg = _config(args)
    if not cfg.redis_url:
        raise CliError("`xapi worker` needs redis_url; without it the server runs work itself")
    if args.config:
        os.environ["XAPI_CONFIG"] = args.config  # the Celery app reads the same file
    from xapi import firstboot
    from workers.celery_app import app, queue_for, use_broker

    host = firstboot.host_uuid(cfg.state_dir)
    use_broker(app, cfg.redis_url)
    app.worker_main([
        "worker", "--queues", queue_for(host), "--pool", "threads",
        "--concurrency", str(args.concurrency), "--loglevel", cfg.log_level.upper(),
        "--hostname", f"xapi-{host}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
    ])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xapi", description="XenAPI-compatible pool server")
    parser.add_argument("-c", "--config", help="configuration file (default: $XAPI_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the server").set_defaults(fn=cmd_serve)
    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="migrate the database to the latest schema").set_defaults(
        fn=cmd_db_upgrade
    )
    sub.add_parser("passwd", help="set root's password (read from stdin)").set_defaults(fn=cmd_passwd)
    worker = sub.add_parser("worker", help="run this host's Celery worker (with redis_url)")
    worker.add_argument("--concurrency", type=int, default=4)
    worker.set_defaults(fn=cmd_worker)
    # `-c` is accepted after the sub-command too: `xapi serve -c etc/xapi.conf`.
    for p in (sub.choices["serve"], sub.choices["passwd"], db_sub.choices["upgrade"], worker):
        p.add_argument("-c", "--config", dest="config", default=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except CliError as exc:
        print(f"xapi: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
