"""The generated model: complete, reproducible, consistent with upstream's export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xapi.idl import generate
from xapi.idl.model import load, model
from xapi.idl.types import parse

SHARED = generate.DEFAULT_SHARED


def test_all_classes_and_messages_are_present():
    m = model()
    assert len(m.classes) == 73
    assert len(m.methods) == 2258
    assert m.api_version == (2, 23)
    vm = m.classes["VM"]
    assert vm.fields["VBDs"].derived.from_cls == "VBD"
    start = vm.messages["start"]
    assert [p.name for p in start.params] == ["vm", "start_paused", "force"]
    assert start.async_ and start.required_count == 3
    login = m.classes["session"].messages["login_with_password"]
    assert not login.session and login.required_count == 2
    assert [p.default for p in login.params[2:]] == ["1.1", ""]


def test_model_carries_no_prose():
    def keys(node):
        if isinstance(node, dict):
            for k, v in node.items():
                yield k
                yield from keys(v)
        elif isinstance(node, list):
            for v in node:
                yield from keys(v)

    found = set(keys(json.loads(Path(generate.OUTPUT).read_text())))
    assert not found & {"description", "doc", "transitions"}


def test_generator_reproduces_the_committed_model(tmp_path):
    if not (SHARED / "datamodel.json").exists():
        pytest.skip(f"LOUD SKIP: {SHARED} is absent; cannot regenerate the model")
    built = generate.generate(
        json.loads((SHARED / "datamodel.json").read_text()),
        json.loads((SHARED / "errors.json").read_text()),
    )
    out = tmp_path / "model.json"
    generate.write(built, out)
    assert out.read_text() == Path(generate.OUTPUT).read_text(), "run: python -m xapi.idl.generate"


@pytest.mark.parametrize("text", [
    "string", "int", "enum vm_power_state", "VM ref", "VM record", "string set",
    "enum vm_operations set", "(string -> enum vm_operations) map", "(int -> string set) map",
    "(VM ref -> (string -> string) map) map", "sr_stat record option",
])
def test_type_grammar_round_trips(text):
    assert str(parse(text)) == text


def test_every_error_code_raised_by_the_code_exists():
    import re

    m = load()
    root = Path(__file__).resolve().parents[2]
    codes = set()
    for path in [*root.glob("api/*.py"), *root.glob("xapi/**/*.py"), *root.glob("db/*.py")]:
        codes |= set(re.findall(r'ApiError\(\s*"([A-Z_]+)"', path.read_text()))
    missing = codes - set(m.errors) - {"Fault"}
    assert not missing, missing
