"""Markers for values whose wire form differs from their Python type."""


class I4(int):
    """An int sent as XML-RPC ``<i4>`` (xapi's only typed int: event.from's
    ``valid_ref_counts``); other API ints travel as untyped decimal text."""
