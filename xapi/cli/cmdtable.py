"""The command table: every command's name, parameters, flags and handler; ``xe help``.

Commands register themselves with :func:`command` (``operations.py``) or are
generated per class (``params.py``).  A :class:`CommandSpec` names its
required and optional parameters as xe does; optional names ending in ``:``
(``device-config:``) take any key after the colon.  Commands that select
objects by their fields (``Vm_selectors`` in xe) or take arbitrary fields
(``<class>-list``, ``<class>-param-set``) accept any other parameter and check
it against the class's fields; the others reject a parameter they do not
know, naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import CliFailure, ParamError
from .fields import Context, xe_bool
from .printer import Printer

# Parameters every command accepts (xe's ``stdparams``, plus ``progress``).
STDPARAMS = ("server", "password", "port", "username", "minimal", "force", "multiple", "all",
             "message-priority", "trace", "progress")

STANDARD, HIDDEN = "standard", "hidden"
# Runs on a local session (session.slave_local_login_with_password), as xe's
# *_local_session commands: they must work on a member whose master is gone.
LOCAL_SESSION = "local-session"
VM_SELECTORS, HOST_SELECTORS, SR_SELECTORS = "vm-selectors", "host-selectors", "sr-selectors"

SELECTOR_HELP = {
    VM_SELECTORS: (
        " The VMs to act on are chosen by filtering all VMs on zero or more of their fields,"
        " for example 'uuid=<uuid>' or 'power-state=halted'; the pseudo-field 'vm' matches"
        " a name-label or a uuid. When several VMs match, '--multiple' is needed. 'xe vm-list"
        " params=all' shows the fields. With no selector at all, every VM is chosen."),
    HOST_SELECTORS: (
        " The hosts to act on are chosen by filtering all hosts on zero or more of their fields;"
        " the pseudo-field 'host' matches a hostname, a name-label or a uuid. When several hosts"
        " match, '--multiple' is needed."),
    SR_SELECTORS: (
        " The SRs to act on are chosen by filtering all SRs on zero or more of their fields;"
        " the pseudo-field 'sr' matches a name-label or a uuid. When several SRs match,"
        " '--multiple' is needed."),
}


@dataclass
class CommandSpec:
    name: str
    reqd: list[str]
    optn: list[str]
    help: str
    handler: Callable[["Invocation"], None]
    flags: frozenset[str] = frozenset()
    open_params: bool = False  # takes arbitrary further parameters (fields, map keys)
    cls: str | None = None  # the CLI class it works on, for completion

    @property
    def selectors(self) -> str | None:
        for f in (VM_SELECTORS, HOST_SELECTORS, SR_SELECTORS):
            if f in self.flags:
                return f
        return None

    def accepts(self, key: str) -> bool:
        if self.open_params or self.selectors:
            return True
        if key in STDPARAMS or key in self.reqd or key in self.optn:
            return True
        for opt in self.optn:
            if opt.endswith((":", "-")) and key.startswith(opt[:-1]) and len(key) > len(opt):
                return True
        return False


TABLE: dict[str, CommandSpec] = {}


def command(name: str, reqd: list[str] | None = None, optn: list[str] | None = None,
            help: str = "", flags: tuple[str, ...] = (), open_params: bool = False,
            cls: str | None = None):
    """Register a handler under ``name`` (a decorator)."""

    def register(fn: Callable[["Invocation"], None]):
        TABLE[name] = CommandSpec(name, list(reqd or []), list(optn or []), help, fn,
                                  frozenset(flags), open_params, cls)
        return fn

    return register


def add(spec: CommandSpec) -> None:
    TABLE[spec.name] = spec


# -- a running command ---------------------------------------------------------------


@dataclass
class Invocation:
    spec: CommandSpec
    params: list[tuple[str, str]]
    session: Any
    printer: Printer
    runner: Any = None  # tasks.TaskRunner
    stdin: Any = None
    stdout: Any = None
    stderr: Any = None
    extra: dict = field(default_factory=dict)

    def has(self, key: str) -> bool:
        return any(k == key for k, _ in self.params)

    def get(self, key: str, default: str | None = None) -> str | None:
        for k, v in self.params:
            if k == key:
                return v
        return default

    def req(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise ParamError("Required parameter not found", key)
        return value

    def flag(self, key: str, default: bool = False) -> bool:
        value = self.get(key)
        return default if value is None else xe_bool(value, key)

    def map_params(self, name: str) -> list[tuple[str, str]]:
        """``name:key=value`` (or xe's older ``name-key=value``) pairs, as (key, value)."""
        n = len(name) + 1
        return [(k[n:], v) for k, v in self.params if k.startswith(name) and len(k) > n]

    def ctx(self, bulk: bool = False) -> Context:
        return Context(self.session, bulk)

    def call(self, method: str, *args: Any) -> Any:
        return self.session.call(method, *args)

    def run_task(self, method: str, *args: Any) -> Any:
        return self.runner.run(method, *args)

    def user_says_yes(self) -> bool:
        self.printer.lines(["Type 'yes' to continue"])
        line = self.stdin.readline() if self.stdin is not None else ""
        response = line.rstrip("\n")
        if response.strip().lower() == "yes":
            return True
        self.printer.lines([f"Aborted (you typed: '{response}')"])
        return False


# -- parsing a command line ------------------------------------------------------------

_SWITCHES = {"-u": "username", "-pw": "password", "-s": "server", "-h": "server", "-p": "port"}


def parse_command_line(args: list[str]) -> tuple[str, list[tuple[str, str]]]:
    """``vm-start vm=x --force`` → (``vm-start``, [(vm, x), (force, true)])."""
    if not args:
        raise ParamError("Syntax error", "command name is missing")
    name = args[0]
    if "=" in name:
        raise ParamError("Syntax error", "command name is missing")
    params: list[tuple[str, str]] = []
    i = 1
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            params.append((arg[2:], "true"))
        elif arg.startswith("-") and "=" not in arg:
            if arg not in _SWITCHES:
                raise ParamError("Syntax error", f"Unknown switch: {arg}")
            if i + 1 >= len(args):
                raise ParamError("Syntax error", f"Switch {arg} requires a parameter")
            params.append((_SWITCHES[arg], args[i + 1]))
            i += 1
        else:
            key, _, value = arg.partition("=")
            params.append((key, value))
        i += 1
    return name, params


def check_params(spec: CommandSpec, params: list[tuple[str, str]]) -> None:
    for key in spec.reqd:
        if not any(k == key for k, _ in params):
            raise ParamError("Required parameter not found", key)
    for key, _ in params:
        if not spec.accepts(key):
            raise ParamError("Unknown parameter", f"{key} (not a parameter of {spec.name})")


# -- xe help ---------------------------------------------------------------------------

USAGE = """Usage:
  {argv0} <command>
    [ -s <server> ]            Server to talk to (127.0.0.1: the local socket first)
    [ -p <port> ]              Port number
    [ -u <username> -pw <password> | -pwf <password file> ]
                               User and password, or a file with both
    [ --nossl ]                Plain HTTP instead of HTTPS
    [ --debug ]                Show debug output
    [ --debug-on-fail ]        Show debug output only when the command fails
    [ --minimal ]              Print only values, as comma-separated lists
    [ --traceparent <value> ]  Tracing context to pass to the server
    [ <other arguments> ... ]  Parameters of the command

  {argv0} help              lists the common commands,
  {argv0} help --all        all commands,
  {argv0} help <command>    a command's parameters.
  {argv0} completion bash   prints a bash completion script.
"""


def make_list(names: list[str]) -> list[str]:
    """Command names in comma-separated lines of at most about 74 characters."""
    indent = "    "
    lines: list[str] = []
    current = indent + names[0]
    for name in names[1:]:
        if len(current) + len(name) > 74:
            lines.append(current)
            current = indent + name
        else:
            current += ", " + name
    lines.append(current)
    return lines


def help_command(printer: Printer, argv0: str, params: list[tuple[str, str]]) -> None:
    wanted = [k for k, _ in params if k not in ("server", "username", "password", "port",
                                                 "minimal", "all")]
    if wanted:
        for name in wanted:
            spec = TABLE.get(name)
            if spec is None:
                printer.lines([f"Unknown command '{name}'"])
                continue
            optional = list(spec.optn)
            selectors = spec.selectors
            description = spec.help
            if selectors:
                optional.append(f"<{selectors}>")
                description += SELECTOR_HELP[selectors]
            printer.table([[
                ("command name        ", name),
                ("reqd params     ", ", ".join(spec.reqd)),
                ("optional params ", ", ".join(optional)),
                ("description     ", description),
            ]])
        return
    visible = sorted(n for n, s in TABLE.items() if HIDDEN not in s.flags)
    header = USAGE.format(argv0=argv0)
    if dict(params).get("all") == "true":
        if printer.minimal:
            printer.lines(visible)
            return
        hosts = [n for n in visible if n.startswith("host-")]
        vms = [n for n in visible if n.startswith("vm-")]
        others = [n for n in visible if not n.startswith(("host-", "vm-"))]
        printer.lines([header + "\nFull command list\n-----------------"])
        for group in (hosts, [""], vms, [""], others):
            printer.lines(make_list(group))
        return
    common = [n for n in visible if STANDARD in TABLE[n].flags]
    if printer.minimal:
        printer.lines(common)
        return
    printer.lines([header + "\nCommon command list\n-------------------"])
    printer.lines(make_list(common))


def fail(text: str):
    raise CliFailure(text)
