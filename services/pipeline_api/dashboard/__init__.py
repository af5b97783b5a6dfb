"""The dashboard: a browser client of the public ``/v1`` API, served by the API process.

The page and its assets (plain ES modules, one stylesheet, the vendored Chart.js) ship in
``static/`` inside this package, so an install carries them and nothing is fetched from
anywhere else: the dashboard works offline. It reads and writes only through ``/v1``.
"""
