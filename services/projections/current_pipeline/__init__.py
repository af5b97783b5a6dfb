"""Read model 1, the current pipeline: one row per deal, open totals per pipeline stage.

``schema`` defines the tables, ``projector`` folds events into them, ``queries`` reads
them (the only part the query layer imports).
"""
