"""Tamper evidence while the service runs: the checkpoint writer (``checkpoints.py``).

The hash chain itself lives in ``libs/application/integrity.py``; the ``dealtrail audit``
commands in ``services/cli/audit.py``.
"""
