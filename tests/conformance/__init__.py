"""Conformance suites: one contract per module, run against every implementation of it.

Each suite takes its implementations from a fixture (the project's own by
default) and says in its docstring how to point it at another one.
"""
