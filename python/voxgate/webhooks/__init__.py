"""Signed webhooks: session events POSTed to ``VOXGATE_WEBHOOK_URL`` from a durable outbox.

``events`` builds event ids and bodies (used by the stores, which enqueue
events in the transaction that changes a session), ``signing`` signs and
verifies them, ``runner`` claims due events from the store and sends them.
docs/clients.md "Webhooks" is the contract receivers rely on.
"""
