"""Read model 3, audit history: one append-only row per event, with before/after values.

``schema`` defines the table, ``projector`` writes the rows, ``queries`` reads them.
"""
