"""Object references and UUIDs."""

import uuid as _uuid

from xapi.idl.types import NULL_REF

__all__ = ["NULL_REF", "make_ref", "make_uuid", "is_ref"]


def make_uuid() -> str:
    return str(_uuid.uuid4())


def make_ref() -> str:
    return f"OpaqueRef:{_uuid.uuid4()}"


def is_ref(value: object) -> bool:
    return isinstance(value, str) and value.startswith("OpaqueRef:") and value != NULL_REF
