"""Pools: roles, the pool secret, join/eject/hand-over, liveness and forwarding helpers.

A pool is one PostgreSQL database and one Redis shared by every host.  Each
host runs the same daemon; whether it is the master comes from the database
(``pool.master``), so a change of master needs no restart.
"""
