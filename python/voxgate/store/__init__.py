"""Persistence: the :class:`~voxgate.store.base.Store` protocol and its implementations."""
