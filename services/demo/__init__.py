"""Generated pipeline history for demos and benchmarks (``generator``), and the deal the
demo shows first (``showcase``). The commands are ``dealtrail demo generate|run``."""
