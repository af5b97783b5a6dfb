"""Consumers of the event log that push it out: webhook delivery, the NATS relay and the
server-sent event stream. Each follows the log from a position of its own and sends every
event in the one outbound shape (``envelope.py``)."""
