"""``xe``: parse the command line, connect, run the command, print, exit.

Exit status, as xe's: 0 on success (and for the usage text), 1 for any
failure (server error, bad parameters, unknown command, connection problem,
Ctrl-C).
"""

from __future__ import annotations

import importlib
import io
import os
import sys
from typing import TextIO

from .cmdtable import LOCAL_SESSION, TABLE, Invocation, check_params, help_command, parse_command_line, USAGE
from .connection import Connection, Session, UsageRequested, VersionRequested, parse_options
from .errors import ApiFailure, MultipleFailure, XeError
from .fields import make_resolver
from .printer import Printer
from .tasks import TaskRunner

_LOADED = False


def load_commands() -> None:
    global _LOADED
    if not _LOADED:
        importlib.import_module(f"{__package__}.operations")  # registers its commands
        from .params import register_all

        register_all()
        _LOADED = True


def api_version() -> str:
    from xapi.idl.model import model

    major, minor = model().api_version
    return f"{major}.{minor}"


def _is_tty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def run(argv: list[str], env: dict[str, str] | None = None, stdin: TextIO | None = None,
        stdout: TextIO | None = None, stderr: TextIO | None = None, argv0: str = "xe") -> int:
    env = dict(os.environ) if env is None else env
    stdin = stdin if stdin is not None else sys.stdin
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    load_commands()

    if argv[:1] == ["completion"]:
        from .completion import script

        stdout.write(script(argv[1] if len(argv) > 1 else "bash"))
        return 0
    if argv[:1] == ["__complete"]:
        from .completion import complete_main

        return complete_main(argv[1:], env, stdout)

    try:
        opts, args = parse_options(argv, env, stderr)
    except UsageRequested as e:
        if str(e):
            stderr.write(f"{e}\n")
        stderr.write(USAGE.format(argv0=argv0))
        return 0
    except VersionRequested:
        stdout.write("ThinCLI protocol: 0.2\n")
        return 0
    except XeError as e:
        for line in e.lines():
            stderr.write(line + "\n")
        return e.exit_code
    if not args:
        stderr.write(USAGE.format(argv0=argv0))
        return 0

    debug_buffer = io.StringIO()

    def debug(text: str) -> None:
        if opts.debug:
            stderr.write(text)
        elif opts.debug_on_fail:
            debug_buffer.write(text)

    session: Session | None = None
    conn: Connection | None = None
    status = 1
    try:
        name, params = parse_command_line(args)
        minimal = dict(params).get("minimal") == "true"
        printer = Printer(minimal, stdout, stderr)
        if name == "help":
            help_command(printer, argv0, params)
            printer.flush()
            return 0
        spec = TABLE.get(name)
        if spec is None:
            from .errors import ParamError

            raise ParamError("Unknown command", name)
        check_params(spec, params)
        conn = Connection(opts, debug)
        session = Session.login(conn, opts, api_version(), local=LOCAL_SESSION in spec.flags)
        show_progress = not minimal and (_is_tty(stderr) or any(k == "progress" for k, _ in params))
        runner = TaskRunner(session, stderr, show_progress, in_place=_is_tty(stderr))
        inv = Invocation(spec, params, session, printer, runner, stdin, stdout, stderr,
                         extra={"options": opts, "version": api_version()})
        spec.handler(inv)
        printer.flush()
        status = 0
    except MultipleFailure as e:
        for uuid, text in e.failures:
            stdout.write(f"operation failed on {uuid}: {text}\n")
        status = 1
    except ApiFailure as e:
        for line in e.lines(make_resolver(session)):
            stderr.write(line + "\n")
        status = 1
    except XeError as e:
        for line in e.lines():
            stderr.write(line + "\n")
        status = e.exit_code
    except KeyboardInterrupt:
        if conn is not None:
            conn.reset()  # the interrupted call may have left a reply half-read
        status = 1
    except Exception as e:  # a bug, or a reply this client does not understand
        stderr.write(f"Unhandled exception\n{e!r}\n")
        if opts.debug:
            import traceback

            traceback.print_exc(file=stderr)
        status = 1
    finally:
        if session is not None:
            try:
                session.logout()
            except BaseException:
                pass
        if conn is not None:
            conn.close()
        stdout.flush()
        if status != 0 and opts.debug_on_fail and debug_buffer.getvalue():
            stderr.write("\nDebug info:\n\n" + debug_buffer.getvalue())
        stderr.flush()
    return status


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    argv0 = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "xe"
    try:
        code = run(args, argv0=argv0)
    except KeyboardInterrupt:
        code = 1
    except BrokenPipeError:  # ``xe vm-list | head``: stop quietly, as xe (SIGPIPE ignored) does
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        code = 1
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
