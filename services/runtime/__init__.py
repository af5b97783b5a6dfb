"""The composition root: settings, API keys, the stores and the wiring every entry point
(the HTTP API and the ``dealtrail`` commands) starts from."""
