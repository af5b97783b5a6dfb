"""Read model 2, stage durations: one row per deal per visit to a stage, on business time.

``schema`` defines the table, ``projector`` keeps the visits, ``queries`` reads them.
"""
