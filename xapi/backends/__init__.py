"""Backends: the processes xapi drives (xenopsd for domains, storage plugins).

Each backend has a small contract, a client speaking its real protocol and
the project's own implementation of it.  Backends import neither ``db/`` nor
``api/`` nor each other: they speak in wire values, and the core maps those
to database objects.
"""
