"""Golden read models: every table and every answer of a fixed demo history, kept as files.

``python -m tests.golden`` (re)writes the files; ``tests/integration/test_golden.py``
rebuilds the same history on each backend and compares. A change that is meant to alter
read models or answers regenerates them in the same commit, so the diff shows what
changed; a refactoring leaves them alone.
"""
