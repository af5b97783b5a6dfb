"""Read model 4, sales analytics: the history the reports and ``as_of`` need, on business time.

``schema`` defines the tables, ``projector`` keeps them, ``queries`` reads them.
"""
