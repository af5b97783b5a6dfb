"""Read model 5, automations: every rule as it is now, and every firing of each.

``schema`` defines the tables, ``projector`` keeps them, ``queries`` reads them.
"""
