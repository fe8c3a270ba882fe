"""Shell completion: command names, parameter names, and some values.

``xe completion bash`` (or ``zsh``) prints a script to ``source``; it calls
``xe __complete`` with bash's ``COMP_LINE``/``COMP_POINT``.  Commands and
parameter names come from the command table and the data model, offline.
Values are completed for ``param-name=``/``params=`` (field names),
``class=`` (event-wait), booleans, enum fields used as selectors
(``power-state=``), and, asking the server with the same connection options
as the command line, ``uuid=``, ``<class>-uuid=`` and ``vm=``/``host=``/``sr=``
/``template=`` (best effort: nothing when the server cannot be reached).

xe's own bash-completion script also works with this ``xe``: it reads
``xe help --minimal --all`` and ``xe help <command>``, whose outputs match.
"""

from __future__ import annotations

import shlex
from typing import TextIO

from .classes import CLASSES, CliClass
from .cmdtable import STDPARAMS, TABLE, VM_SELECTORS, HOST_SELECTORS, SR_SELECTORS

DEFAULT_WORDBREAKS = " \t\n\"'@><=;|&(:"

BOOLEAN_PARAMS = {"force", "live", "copy", "paused", "shared", "sharable", "bootable", "unpluggable",
                  "managed", "read-only", "online", "multiple", "minimal", "all", "progress",
                  "compress", "approximate"}

SWITCHES = ["--minimal", "--force", "--multiple", "--all", "--nossl", "--debug", "--debug-on-fail",
            "--progress", "-s", "-p", "-u", "-pw", "-pwf"]

BASH = r"""# xe completion for bash: source this file, or put it in /etc/bash_completion.d/xe
_xe_complete()
{
    local IFS=$'\n'
    COMPREPLY=( $(COMP_LINE="$COMP_LINE" COMP_POINT="$COMP_POINT" \
                  COMP_WORDBREAKS="$COMP_WORDBREAKS" "${COMP_WORDS[0]}" __complete 2>/dev/null) )
    if [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == *[=:,] ]]; then
        compopt -o nospace 2>/dev/null
    fi
    return 0
}
complete -F _xe_complete xe
"""

ZSH = "autoload -U +X bashcompinit && bashcompinit\n" + BASH


def script(shell: str) -> str:
    return ZSH if shell == "zsh" else BASH


# -- what to offer ----------------------------------------------------------------------


def _class_of_param(key: str) -> str | None:
    """``vm-uuid`` → ``vm``, ``sr-uuid`` → ``sr``, ``template-uuid`` → ``template``."""
    if key.endswith("-uuid"):
        name = key[: -len("-uuid")]
        if name in CLASSES:
            return name
    return None


def _field_names(cli: CliClass) -> list[str]:
    return [f.name for f in cli.specs if not f.hidden]


def param_names(command: str) -> list[str]:
    spec = TABLE.get(command)
    if spec is None:
        return []
    names = list(spec.reqd) + list(spec.optn)
    selectors = spec.selectors
    if selectors is not None:
        cli = {VM_SELECTORS: "vm", HOST_SELECTORS: "host", SR_SELECTORS: "sr"}[selectors]
        names.append(cli)
        names += _field_names(CLASSES[cli])
    return names


def _enum_values(cli: CliClass, field: str) -> list[str]:
    from xapi.idl.model import model

    c = model().classes[cli.api]
    wire = field.replace("-", "_")
    f = c.fields.get(wire)
    if f is None or f.type.kind != "enum":
        return []
    values = model().enums.get(f.type.name, [])
    if field == "power-state":
        return [v[:1].lower() + v[1:] for v in values]
    return list(values)


def candidates(words: list[str], cur: str, live=None) -> list[str]:
    """Completions of ``cur`` after ``words`` (the arguments before it, without ``xe``)."""
    rest = _drop_connection_options(words)
    if not rest or (rest == ["help"]):
        if cur.startswith("-"):
            return [s for s in SWITCHES if s.startswith(cur)]
        names = sorted(TABLE) + ([] if rest else ["help"])
        return [n for n in names if n.startswith(cur)]
    command = rest[0]
    spec = TABLE.get(command)
    if spec is None:
        return []
    if cur.startswith("-"):
        return [s for s in SWITCHES if s.startswith(cur)]
    given = {w.split("=", 1)[0] for w in rest[1:]}
    if "=" in cur:
        key, value = cur.split("=", 1)
        return [f"{key}={v}" for v in _values(spec, key, value, live) if v.startswith(value)]
    names = param_names(command)
    out = []
    for n in names:
        if n in given and not n.endswith((":", "-")):
            continue
        text = n if n.endswith((":", "-")) else n + "="
        if text.startswith(cur):
            out.append(text)
    return sorted(dict.fromkeys(out))


def _values(spec, key: str, value: str, live) -> list[str]:
    cli = CLASSES.get(spec.cls) if spec.cls else None
    if spec.selectors:
        cli = CLASSES[{VM_SELECTORS: "vm", HOST_SELECTORS: "host", SR_SELECTORS: "sr"}[spec.selectors]]
    if key in ("param-name",) and cli is not None:
        return _field_names(cli)
    if key in ("params", "vbd-params", "vdi-params") and cli is not None:
        head, _, _ = value.rpartition(",")
        prefix = head + "," if head else ""
        fields = _field_names(cli) + (["all"] if not head else [])
        return [prefix + f for f in fields]
    if key == "class" and spec.name == "event-wait":
        from .operations import EVENT_CLASSES
        return list(EVENT_CLASSES)
    if key in BOOLEAN_PARAMS:
        return ["true", "false"]
    if cli is not None and key in _field_names(cli):
        enums = _enum_values(cli, key)
        if enums:
            return enums
    if live is None:
        return []
    target = None
    if key == "uuid" and cli is not None:
        target = cli.name
    elif _class_of_param(key):
        target = _class_of_param(key)
    elif key in ("vm", "host", "sr", "template", "on"):
        target = {"on": "host"}.get(key, key)
        return live(target, names=True)
    if target is None:
        return []
    return live(target, names=False)


def _drop_connection_options(words: list[str]) -> list[str]:
    out = []
    skip = False
    for w in words:
        if skip:
            skip = False
            continue
        if w in ("-s", "-p", "-u", "-pw", "-pwf", "-h", "--traceparent"):
            skip = True
            continue
        if w in ("--nossl", "--debug", "--debug-on-fail"):
            continue
        out.append(w)
    return out


# -- asking the server -------------------------------------------------------------------


def _live(words: list[str], env: dict[str, str]):
    from .connection import Connection, Session, parse_options
    from .fields import Context, RecordView
    from .main import api_version
    from .params import filter_views

    state = {}

    def fetch(cli_name: str, names: bool) -> list[str]:
        try:
            if "session" not in state:
                opts, _ = parse_options(list(words), env)
                conn = Connection(opts, timeout=3.0)
                state["session"] = Session.login(conn, opts, api_version())
            session = state["session"]
            cli = CLASSES[cli_name]
            records = session.call(f"{cli.api}.get_all_records_where", "true")
            ctx = Context(session, bulk=True)
            ctx.remember(cli.api, records)
            views = filter_views(cli, [RecordView(ctx, cli.api, r, rec) for r, rec in records.items()],
                                 list(cli.filters))
            out = [v.rec.get("uuid", "") for v in views]
            if names:
                out += [v.rec.get("name_label", "") for v in views if v.rec.get("name_label")]
            return out
        except BaseException:
            return []

    def close():
        if "session" in state:
            state["session"].logout()

    fetch.close = close
    return fetch


def _escape(word: str) -> str:
    """Backslash-escape what the shell would otherwise split or expand."""
    return "".join("\\" + ch if ch in " \t'\"\\$`&|;<>()*?[]!#" else ch for ch in word)


def complete_main(args: list[str], env: dict[str, str], out: TextIO) -> int:
    line = env.get("COMP_LINE", " ".join(args))
    try:
        point = int(env.get("COMP_POINT", len(line)))
    except ValueError:
        point = len(line)
    line = line[:point]
    try:
        tokens = shlex.split(line)
    except ValueError:
        tokens = line.split()
    if line and not line[-1].isspace() and tokens:
        cur = tokens.pop()
    else:
        cur = ""
    words = tokens[1:]
    live = _live(words, env)
    try:
        found = candidates(words, cur, live)
    finally:
        try:
            live.close()
        except Exception:
            pass
    breaks = env.get("COMP_WORDBREAKS", DEFAULT_WORDBREAKS)
    cut = max((cur.rfind(c) for c in breaks if c), default=-1) + 1
    for c in found:
        out.write(_escape(c[cut:]) + "\n")
    return 0


__all__ = ["script", "candidates", "param_names", "complete_main", "STDPARAMS"]
