"""``voxgate serve``: the server process (Granian's master and its worker processes).

:mod:`voxgate.serve.command` reads the settings, checks the port, TLS files and
database, then runs Granian; :mod:`voxgate.serve.granian_internals` holds every
use of Granian's private API.
"""
