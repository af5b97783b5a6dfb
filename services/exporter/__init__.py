"""The event log as JSON Lines, for auditors and archives (``events``); the command is
``dealtrail export events``, the route ``GET /v1/audit/export``."""
