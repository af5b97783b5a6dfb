"""The query layer: every answer the read side gives, live and as of a past moment.

Deals (``deals``), the board (``board``), staleness in SQL (``staleness``), owners
(``owners``) and the sales reports (``reports``) read the projections' tables through
their ``queries`` modules and render deals through the domain's one view
(``libs/domain/views.py``). The API, the command line and anything else that answers
questions import this layer, never the projectors.
"""
