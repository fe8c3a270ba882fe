"""Byte-exact formatting of the ``xe`` client, against real xe output and xapi's printer.

Samples: the task record quoted in xapi-project/xen-api#6032 and
rposudnevskiy/RBDSR#45 (reference ``real-clients.md`` §4.3), the classic
``xe vm-list`` record, and the rules of xapi's ``cli_printer.ml`` (key width
4 + longest key, first key padded right and the others left, two empty lines
after a record, ``--minimal`` escaping) and ``records.ml`` (value rendering,
``( RO)``-style markers, ``<not in database>``, ``%.3f`` floats).
"""

from __future__ import annotations

import io
import os

import pytest

from xapi.cli import classes, completion, connection, errors, fields, printer
from xapi.cli.cmdtable import TABLE, help_command, parse_command_line
from xapi.cli.main import load_commands, run
from xapi.cli.tasks import ProgressBar, decode_result

load_commands()


# -- records ---------------------------------------------------------------------------

TASK_SAMPLE = (
    "uuid ( RO)                : a2403851-88db-2e64-f556-8673b5584e9b\n"
    "          name-label ( RO): host.call_plugin\n"
    "    name-description ( RO): \n"
    "              status ( RO): pending\n"
    "            progress ( RO): 0.000\n"
)


def test_record_layout_matches_real_xe_task_record():
    record = [("uuid ( RO)", "a2403851-88db-2e64-f556-8673b5584e9b"),
              ("name-label ( RO)", "host.call_plugin"),
              ("name-description ( RO)", ""),
              ("status ( RO)", "pending"),
              ("progress ( RO)", "0.000")]
    assert printer.format_record(record) == TASK_SAMPLE


def test_records_are_followed_by_two_empty_lines():
    out = io.StringIO()
    p = printer.Printer(out=out)
    p.table([[("uuid ( RO)", "a")], [("uuid ( RO)", "b")]])
    p.flush()
    assert out.getvalue() == "uuid ( RO)    : a\n\n\nuuid ( RO)    : b\n\n\n"


def test_empty_table_prints_nothing_and_minimal_prints_an_empty_line():
    out = io.StringIO()
    p = printer.Printer(out=out)
    p.table([])
    p.flush()
    assert out.getvalue() == ""
    out = io.StringIO()
    p = printer.Printer(minimal=True, out=out)
    p.table([])
    p.flush()
    assert out.getvalue() == "\n"


def test_minimal_takes_the_first_field_and_escapes_commas_and_backslashes():
    out = io.StringIO()
    p = printer.Printer(minimal=True, out=out)
    p.table([[("name-label ( RW)", "a,b"), ("uuid ( RO)", "x")],
             [("name-label ( RW)", "c\\d"), ("uuid ( RO)", "y")]])
    p.message("dropped in minimal mode")
    p.stderr("dropped too")
    p.flush()
    assert out.getvalue() == "a\\,b,c\\\\d\n"


def test_minimal_joins_batches_in_xe_order():
    out = io.StringIO()
    p = printer.Printer(minimal=True, out=out)
    p.lines(["1", "2"])
    p.lines(["3"])
    p.flush()
    assert out.getvalue() == "3,1,2\n"  # xe prepends each batch to its buffer


def test_lists_and_messages_print_one_line_each():
    out, err = io.StringIO(), io.StringIO()
    p = printer.Printer(out=out, err=err)
    p.lines(["a", "b"])
    p.message("m")
    p.stderr("e")
    assert out.getvalue() == "a\nb\nm\n" and err.getvalue() == "e\n"


# -- fields and values --------------------------------------------------------------------


class FakeSession:
    """Answers get_record/get_all_records from canned records."""

    def __init__(self, records: dict[str, dict[str, dict]]):
        self.records = records
        self.calls: list[str] = []

    def call(self, method, *args):
        self.calls.append(method)
        cls, name = method.split(".", 1)
        if name == "get_record":
            if args[0] not in self.records.get(cls, {}):
                raise errors.ApiFailure("HANDLE_INVALID", [cls, args[0]])
            return self.records[cls][args[0]]
        if name in ("get_all_records", "get_all_records_where"):
            return self.records.get(cls, {})
        raise errors.ApiFailure("MESSAGE_METHOD_UNKNOWN", [method])


def vm_record(**over):
    rec = {"uuid": "8b4f5c3c-0d6b-4a3e-9a2e-1a2b3c4d5e6f", "name_label": "Control domain on host: xs1",
           "power_state": "Running", "is_a_template": False, "is_control_domain": True,
           "tags": [], "other_config": {}, "VBDs": [], "consoles": [], "metrics": "OpaqueRef:NULL",
           "resident_on": "OpaqueRef:h", "affinity": "OpaqueRef:NULL", "HVM_shadow_multiplier": 1.0,
           "allowed_operations": [], "current_operations": {}}
    rec.update(over)
    return rec


def show(cli_name, rec, names, ref="OpaqueRef:v", others=None):
    cli = classes.CLASSES[cli_name]
    session = FakeSession({cli.api: {ref: rec}, **(others or {})})
    view = fields.RecordView(fields.Context(session), cli.api, ref, rec)
    rows = []
    for name in names:
        spec = cli.spec(name)
        rows.append((spec.label, spec.value(view)))
    return printer.format_record(rows)


def test_vm_list_record_is_byte_exact():
    text = show("vm", vm_record(), ["uuid", "name-label", "power-state"])
    assert text == ("uuid ( RO)           : 8b4f5c3c-0d6b-4a3e-9a2e-1a2b3c4d5e6f\n"
                    "     name-label ( RW): Control domain on host: xs1\n"
                    "    power-state ( RO): running\n")


def test_markers_follow_what_a_field_can_do():
    vm = classes.CLASSES["vm"]
    assert vm.spec("uuid").marker == " ( RO)"
    assert vm.spec("name-label").marker == " ( RW)"
    assert vm.spec("memory-static-max").marker == " ( RW)"  # StaticRO, but VM.set_memory_static_max exists
    assert vm.spec("allowed-operations").marker == " (SRO)"
    assert vm.spec("tags").marker == " (SRW)"
    assert vm.spec("snapshots").marker == " ( RO)"  # xe shows this set as a plain value
    assert vm.spec("platform").marker == " (MRW)"
    assert vm.spec("bios-strings").marker == " (MRO)"
    assert vm.spec("ha-always-run").label == "ha-always-run ( RW) [DEPRECATED]"
    assert classes.CLASSES["pif"].spec("properties").marker == " (MRO)"
    assert classes.CLASSES["vif"].spec("ipv4-allowed").marker == " (SRW)"


def test_vm_fields_in_xe_order_with_xe_names():
    names = [s.name for s in classes.CLASSES["vm"].specs]
    assert names[:16] == ["uuid", "name-label", "name-description", "user-version", "is-a-template",
                          "is-default-template", "is-a-snapshot", "snapshot-of", "snapshots",
                          "snapshot-time", "transportable-snapshot-id", "snapshot-info", "parent",
                          "children", "is-control-domain", "power-state"]
    assert names.index("console-uuids") < names.index("hvm") < names.index("platform")
    assert names[-3:] == ["vtpms", "pending-guidances-recommended", "pending-guidances-full"]
    hidden = {s.name for s in classes.CLASSES["vm"].specs if s.hidden}
    assert hidden == {"transportable-snapshot-id", "nomigrate", "nested-virt", "NVRAM"}
    expensive = {s.name for s in classes.CLASSES["vm"].specs if s.expensive}
    assert expensive == {"memory-target", "allowed-VBD-devices", "allowed-VIF-devices",
                         "possible-hosts", "last-boot-record", "VCPUs-utilisation", "cooperative"}


def test_default_list_columns_are_xe_s():
    c = classes.CLASSES
    assert c["vm"].list_params == ["name-label", "uuid", "power-state"]
    assert c["vm"].filters == [("is-a-template", "false")]
    assert c["template"].filters == [("is-a-template", "true"), ("is-a-snapshot", "false")]
    assert c["sr"].list_params == ["uuid", "name-label", "name-description", "host", "type",
                                   "content-type"]
    assert c["pbd"].list_params == ["uuid", "host-uuid", "sr-uuid", "device-config",
                                    "currently-attached"]


def test_value_rendering_of_maps_sets_floats_refs_and_enums():
    host = {"uuid": "11111111-2222-3333-4444-555555555555", "name_label": "xs1"}
    rec = vm_record(other_config={"k1": "v1", "k2": "v2"}, tags=["a", "b"],
                    allowed_operations=["start", "assert_operation_valid"],
                    current_operations={"OpaqueRef:t": "clone"},
                    actions_after_crash="coredump_and_restart", domain_type="pv_in_pvh",
                    power_state="Halted")
    text = show("vm", rec, ["other-config", "tags", "allowed-operations", "current-operations",
                            "HVM-shadow-multiplier", "resident-on", "affinity", "actions-after-crash",
                            "domain-type", "power-state", "memory-actual", "hvm", "os-version"],
                others={"host": {"OpaqueRef:h": host}})
    lines = text.splitlines()
    width = 4 + len("HVM-shadow-multiplier ( RW)")
    assert lines[0] == "other-config (MRW)".ljust(width) + ": k1: v1; k2: v2"
    assert lines[1] == "tags (SRW)".rjust(width) + ": a, b"
    assert lines[2].endswith(": start; assertoperationvalid")
    assert lines[3].endswith(": clone")
    assert lines[4] == "HVM-shadow-multiplier ( RW)".rjust(width) + ": 1.000"
    assert lines[5].endswith(": 11111111-2222-3333-4444-555555555555")
    assert lines[6].endswith(": <not in database>")
    assert lines[7].endswith(": Core dump and restart")
    assert lines[8].endswith(": pv-in-pvh")
    assert lines[9].endswith(": halted")
    assert lines[10].endswith("memory-actual ( RO): <not in database>")
    assert lines[11].endswith("hvm ( RO): false")
    assert lines[12].endswith("os-version (MRO): <not in database>")


def test_computed_names_and_empty_cd():
    vm = {"uuid": "vm-u", "name_label": "web"}
    vbd = {"uuid": "vbd-u", "VM": "OpaqueRef:vm", "VDI": "OpaqueRef:NULL", "empty": True,
           "type": "CD", "mode": "RO"}
    text = show("vbd", vbd, ["vm-uuid", "vm-name-label", "vdi-uuid", "vdi-name-label", "type", "mode"],
                others={"VM": {"OpaqueRef:vm": vm}})
    assert text.splitlines() == [
        "vm-uuid ( RO)           : vm-u",
        "     vm-name-label ( RO): web",
        "          vdi-uuid ( RO): <not in database>",
        "    vdi-name-label ( RO): <EMPTY>",
        "              type ( RW): CD",
        "              mode ( RW): RO",
    ]


def test_task_record_through_the_fields_matches_the_real_sample():
    task = {"uuid": "a2403851-88db-2e64-f556-8673b5584e9b", "name_label": "host.call_plugin",
            "name_description": "", "status": "pending", "progress": "0"}
    assert show("task", task, ["uuid", "name-label", "name-description", "status", "progress"]) \
        == TASK_SAMPLE


def test_sr_host_column():
    sr = {"uuid": "s", "PBDs": ["OpaqueRef:p1", "OpaqueRef:p2"]}
    assert show("sr", sr, ["host"]).endswith(": <shared>\n")
    sr = {"uuid": "s", "PBDs": ["OpaqueRef:p1"]}
    text = show("sr", sr, ["host"], others={"PBD": {"OpaqueRef:p1": {"host": "OpaqueRef:h"}},
                                            "host": {"OpaqueRef:h": {"uuid": "h", "name_label": "xs1"}}})
    assert text == "host ( RO)    : xs1\n"


def test_model_derived_fields_for_other_classes():
    bond = classes.CLASSES["bond"]
    names = [s.name for s in bond.specs]
    assert names[0] == "uuid" and "other-config" in names
    assert bond.spec("other-config").marker == " (MRW)"
    assert bond.spec("slaves").marker == " (SRO)"
    assert "vm-metrics" in classes.CLASSES and classes.CLASSES["vm-metrics"].api == "VM_metrics"


def test_sizes_and_booleans():
    assert fields.bytes_of_string("x", "128MiB") == 128 << 20
    assert fields.bytes_of_string("x", "2 GiB") == 2 << 30
    assert fields.bytes_of_string("x", "42") == 42
    with pytest.raises(errors.CliFailure) as e:
        fields.bytes_of_string("virtual-size", "12parsecs")
    assert e.value.lines() == ["Error: Failed to parse field 'virtual-size': expecting an integer "
                               "(possibly with suffix KiB, MiB, GiB, TiB), got '12parsecs'"]
    assert fields.xe_bool("yes") and not fields.xe_bool("0")


# -- errors --------------------------------------------------------------------------------


def test_server_error_layout():
    lines = errors.format_api_error("VM_BAD_POWER_STATE", ["OpaqueRef:x", "halted", "running"],
                                    lambda name, v: "uuid (vm1)" if v.startswith("OpaqueRef:") else v)
    assert lines == ["Error code: VM_BAD_POWER_STATE",
                     "The VM is not in the power state the operation needs.",
                     "vm: uuid (vm1)", "expected: halted", "actual: running"]


def test_server_error_with_missing_and_extra_parameters():
    assert errors.format_api_error("UUID_INVALID", ["VM"]) == [
        "Error code: UUID_INVALID", errors.MESSAGES["UUID_INVALID"], "type: VM", "uuid: <unknown>"]
    assert errors.format_api_error("VM_IS_TEMPLATE", ["a", "b"])[2:] == ["vm: a", "<extra>: b"]


def test_unknown_error_codes_print_as_xe_prints_them():
    assert errors.format_api_error("NOT_A_CODE", ["a", "b"]) == [
        "Error code: NOT_A_CODE", "Error parameters: a, b"]


def test_codes_without_a_message_get_a_readable_one():
    assert errors.format_api_error("VDI_NOT_MANAGED", ["OpaqueRef:v"])[1] == "VDI not managed."


def test_usage_errors():
    assert errors.ParamError("Required parameter not found", "uuid").lines() == [
        "Required parameter not found: uuid", "For usage run: 'xe help'"]
    assert errors.ParamError("", "Authentication failed").lines() == [
        "Authentication failed", "For usage run: 'xe help'"]
    assert errors.CliFailure("No matching VMs found").lines() == ["Error: No matching VMs found"]


# -- command line -----------------------------------------------------------------------------


def test_command_line_parsing():
    assert parse_command_line(["vm-start", "vm=a=b", "--force", "novalue"]) == (
        "vm-start", [("vm", "a=b"), ("force", "true"), ("novalue", "")])
    with pytest.raises(errors.ParamError) as e:
        parse_command_line(["vm-list", "-x"])
    assert e.value.lines()[0] == "Syntax error: Unknown switch: -x"
    with pytest.raises(errors.ParamError):
        parse_command_line(["uuid=x"])


def test_extra_args_split_on_unescaped_commas():
    assert connection.split_extra_args("server=h,port=80") == ["server=h", "port=80"]
    assert connection.split_extra_args("name-label=a\\,b,,x") == ["name-label=a,b", "x"]


def test_option_priority_command_line_then_env_then_rc(tmp_path):
    (tmp_path / ".xe").write_text("server=rc-host\nport=1\nusername=rcuser\nminimal=true\n")
    env = {"HOME": str(tmp_path), "XE_EXTRA_ARGS": "port=2,-pw,envpw"}
    opts, args = connection.parse_options(["-p", "3", "vm-list"], env)
    assert (opts.server, opts.port, opts.username, opts.password) == ("rc-host", 3, "rcuser", "envpw")
    assert args == ["vm-list", "minimal=true"]  # rc keys that are not options become arguments
    opts, _ = connection.parse_options(["vm-list"], env)
    assert opts.port == 2


def test_bad_rc_file_loads_nothing(tmp_path):
    (tmp_path / ".xe").write_text("server=x\nnonsense\n")
    err = io.StringIO()
    opts, _ = connection.parse_options(["vm-list"], {"HOME": str(tmp_path)}, err)
    assert opts.server == "127.0.0.1"
    assert err.getvalue() == "Error parsing rc file. No defaults loaded\n"


def test_password_file(tmp_path):
    pwf = tmp_path / "pw"
    pwf.write_text("admin\nsecret\n")
    opts, _ = connection.parse_options(["-pwf", str(pwf), "vm-list"], {})
    assert (opts.username, opts.password) == ("admin", "secret")
    pwf.write_text("admin\n")
    with pytest.raises(errors.ExitWithError) as e:
        connection.parse_options(["-pwf", str(pwf), "vm-list"], {})
    assert e.value.lines() == ["Error: password file format: expecting username on the first line, "
                               "password on the second line"]


def test_usage_and_bad_port_exit_zero_as_xe():
    for argv in ([], ["--help"], ["-p", "70000", "vm-list"]):
        out, err = io.StringIO(), io.StringIO()
        assert run(argv, env={}, stdout=out, stderr=err) == 0
        assert "Usage:" in err.getvalue()
    assert err.getvalue().startswith("Port number must be an integer (0-65535)\nUsage:")


def test_help_for_a_command_uses_xe_s_layout():
    out = io.StringIO()
    help_command(printer.Printer(out=out), "xe", [("vbd-create", "")])
    lines = out.getvalue().splitlines()
    assert lines[0] == "command name            : vbd-create"
    assert lines[1] == "        reqd params     : vm-uuid, device"
    assert lines[2] == "        optional params : vdi-uuid, bootable, type, mode, unpluggable"
    assert lines[3].startswith("        description     : ")


def test_help_minimal_all_lists_every_visible_command():
    out = io.StringIO()
    p = printer.Printer(minimal=True, out=out)
    help_command(p, "xe", [("all", "true"), ("minimal", "true")])
    p.flush()
    names = out.getvalue().strip().split(",")
    assert "vm-start" in names and "vm-param-list" in names and "network-attach" not in names


def test_generated_commands_exist_for_every_class():
    for name in ("vm", "template", "snapshot", "host", "pool", "sr", "vdi", "vbd", "vif", "network",
                 "pif", "pbd", "task", "message", "bond", "vm-metrics"):
        assert f"{name}-list" in TABLE and f"{name}-param-get" in TABLE
    assert TABLE["vm-param-set"].open_params and "name-label" in TABLE["vm-param-set"].optn
    assert "other-config:" in TABLE["vm-param-set"].optn
    assert "task-param-set" in TABLE  # other-config is writable
    assert "vm-param-add" in TABLE and "vm-param-clear" in TABLE


# -- progress and tasks ------------------------------------------------------------------------


def test_progress_bar_line():
    assert ProgressBar.line(0.0) == "\r   0% | "
    assert ProgressBar.line(0.5) == "\r  50% - " + "#" * 35
    assert ProgressBar.line(0.25) == "\r  25% / " + "#" * 17
    assert ProgressBar.line(1.0) == "\r 100% | " + "#" * 70


def test_task_result_decoding():
    assert decode_result("<value>OpaqueRef:abc</value>") == "OpaqueRef:abc"
    assert decode_result("") is None
    assert decode_result("<value><array><data><value>a</value></data></array></value>") == ["a"]


# -- completion ---------------------------------------------------------------------------


def test_completion_of_commands_and_parameters():
    assert "vm-start" in completion.candidates([], "vm-st")
    assert completion.candidates(["vm-param-get"], "param-") == ["param-key=", "param-name="]
    assert "power-state=" in completion.candidates(["vm-start"], "pow")
    assert "new-name-label=" in completion.candidates(["vm-clone"], "new")
    assert completion.candidates(["vm-list"], "power-state=h") == ["power-state=halted"]
    assert "param-name=name-label" in completion.candidates(["vm-param-get", "uuid=x"], "param-name=name-l")
    assert completion.candidates(["vm-list"], "params=uuid,name-") == [
        "params=uuid,name-label", "params=uuid,name-description"]
    assert completion.candidates(["sr-create"], "shared=") == ["shared=true", "shared=false"]
    assert completion.candidates(["vm-start", "force=true"], "forc") == []  # already given


def test_completion_script_and_wordbreaks():
    assert "complete -F _xe_complete xe" in completion.script("bash")
    assert completion.script("zsh").startswith("autoload -U +X bashcompinit")
    out = io.StringIO()
    env = {"COMP_LINE": "xe vm-list power-state=ha", "COMP_POINT": "25",
           "COMP_WORDBREAKS": completion.DEFAULT_WORDBREAKS, "HOME": "/nonexistent",
           "XE_UNIX_SOCKET": "/nonexistent"}
    completion.complete_main([], env, out)
    assert out.getvalue() == "halted\n"  # bash already split the word at '='
    out = io.StringIO()
    env["COMP_LINE"], env["COMP_POINT"] = "xe vm-li", "8"
    completion.complete_main([], env, out)
    assert out.getvalue() == "vm-list\n"


def test_cli_package_does_not_import_the_server():
    import subprocess
    import sys

    code = ("import sys, xapi.cli.main as m; m.load_commands(); "
            "bad = [n for n in sys.modules if n.split('.')[0] in ('api', 'db', 'workers', 'aiohttp', "
            "'sqlalchemy')]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert out.stdout.strip() == "[]", out.stderr
