"""What the service tells its operators: metrics, the request context of log lines, traces.

Below the application layer so that every part of the service (the handlers, the event
store, the projections, the API) records into the same metrics and spans. It knows
nothing of HTTP or of the database; ``services/runtime`` configures it for a process
(log format, the metrics endpoint, the tracer) and ``services/pipeline_api`` fills the
request context.
"""
