"""Choosing the objects a command acts on: xe's VM, host and SR selectors.

``vm=<name or uuid>`` (``host=``, ``sr=``) is matched by the server
(``get_all_records_where``); every other parameter that is not one of the
command's own is a ``field=value`` filter on the records.  Templates and
control domains are left out unless the command works on them.  No match is
an error; several need ``--multiple`` where the command allows it, and are
then acted on one by one, failures reported per object.
"""

from __future__ import annotations

import datetime
import xmlrpc.client
from typing import Any, Callable

from .classes import CLASSES
from .cmdtable import STDPARAMS, Invocation
from .errors import ApiFailure, CliFailure, MultipleFailure, XeError, format_api_error
from .fields import RecordView, make_resolver
from .params import filter_views


def _escape(value: str) -> str:
    return value.replace('"', '\\"')


_PSEUDO = {
    "vm": ("vm", ["uuid", "name__label"]),
    "host": ("host", ["uuid", "hostname", "name__label"]),
    "sr": ("sr", ["uuid", "name__label"]),
}


def select(inv: Invocation, cli_name: str, ignore: list[str], implicit: list[tuple[str, str]] = ()) -> list[RecordView]:
    cli = CLASSES[cli_name]
    pseudo, fields = _PSEUDO[cli_name]
    params = list(implicit) + list(inv.params)
    expr = "true"
    for i, (k, v) in enumerate(params):
        if k == pseudo:
            expr = " or ".join(f'(field "{f}"="{_escape(v)}")' for f in fields)
            del params[i]
            break
    ctx = inv.ctx(bulk=True)
    records = inv.call(f"{cli.api}.get_all_records_where", expr)
    ctx.remember(cli.api, records)
    views = [RecordView(ctx, cli.api, ref, rec) for ref, rec in records.items()]
    skip = set(STDPARAMS) | set(ignore)
    filters = [(k, v) for k, v in params if k.split(":", 1)[0] not in skip]
    return filter_views(cli, views, filters)


def _failure_text(e: Exception, resolve=None) -> str:
    if isinstance(e, ApiFailure):
        return "\n".join(format_api_error(e.code, e.params, resolve))
    if isinstance(e, XeError):
        return "\n".join(e.lines())
    return str(e)


def do_multiple(op: Callable[[RecordView], Any], views: list[RecordView], resolve=None) -> list[Any]:
    failures: list[tuple[str, str]] = []
    results = []
    for view in views:
        try:
            results.append(op(view))
        except (ApiFailure, XeError) as e:
            failures.insert(0, (view.rec.get("uuid", ""), _failure_text(e, resolve)))
    if failures:
        raise MultipleFailure(failures)
    return results


def _with_messages(inv: Invocation, op: Callable[[RecordView], Any]) -> Callable[[RecordView], Any]:
    """After each operation, show the VM's new messages above ``message-priority`` (xe's wrap_op)."""
    try:
        limit = int(inv.get("message-priority", "5"))
    except ValueError:
        limit = 5

    def wrapped(view: RecordView) -> Any:
        since = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        result = op(view)
        try:
            msgs = inv.call("message.get", "VM", view.rec.get("uuid", ""),
                            xmlrpc.client.DateTime(since.strftime("%Y%m%dT%H:%M:%SZ")))
        except Exception:
            return result
        for msg in (msgs or {}).values():
            try:
                if int(msg.get("priority", 99)) < limit:
                    inv.printer.stderr(f"Message: time={msg.get('timestamp')} priority="
                                       f"{msg.get('priority')} name='{msg.get('name')}'")
            except (TypeError, ValueError):
                pass
        return result

    return wrapped


def do_vm_op(inv: Invocation, op: Callable[[RecordView], Any], ignore: list[str] = (),
             include_control: bool = False, include_templates: bool = False,
             multiple: bool = True) -> list[Any]:
    implicit = []
    if not include_control:
        implicit.append(("is-control-domain", "false"))
    if not include_templates:
        implicit.append(("is-a-template", "false"))
    views = select(inv, "vm", list(ignore), implicit)
    op = _with_messages(inv, op)
    if not views:
        raise CliFailure("No matching VMs found")
    if len(views) == 1:
        return [op(views[0])]
    if multiple and inv.flag("multiple"):
        return do_multiple(op, views, make_resolver(inv.session))
    if not multiple:
        raise CliFailure("Multiple matches VMs found. Operation can only be performed on one VM at a time")
    raise CliFailure("Multiple matches VMs found. --multiple required to complete the operation")


def do_host_op(inv: Invocation, op: Callable[[RecordView], Any], ignore: list[str] = (),
               multiple: bool = True) -> list[Any]:
    views = select(inv, "host", list(ignore))
    if not views:
        raise CliFailure("No matching hosts found")
    if len(views) == 1:
        return [op(views[0])]
    if multiple and inv.flag("multiple"):
        return do_multiple(op, views, make_resolver(inv.session))
    if not multiple:
        raise CliFailure("Multiple matching hosts found. Operation can only be performed on one host at a time")
    raise CliFailure("Multiple matching hosts found. --multiple required to complete the operation")


def do_sr_op(inv: Invocation, op: Callable[[RecordView], Any], ignore: list[str] = (),
             multiple: bool = True) -> list[Any]:
    views = select(inv, "sr", list(ignore))
    if not views:
        raise CliFailure("No matching SRs found")
    if len(views) == 1:
        return [op(views[0])]
    if multiple and inv.flag("multiple"):
        return do_multiple(op, views, make_resolver(inv.session))
    if not multiple:
        raise CliFailure("Multiple matching SRs found. Operation can only be performed on one SR at a time")
    raise CliFailure("Multiple matching SRs found. --multiple required to complete the operation")


def host_by_name_or_id(inv: Invocation, name: str) -> str:
    records = inv.call("host.get_all_records_where", "true")
    for ref, rec in records.items():
        if rec.get("name_label") == name or rec.get("uuid") == name:
            return ref
    raise CliFailure(f"Host {name} not found")
