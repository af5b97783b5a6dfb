"""Dealtrail's benchmark suite: ``python -m bench`` (everything) or one part on its own.

Parts: ``bench.commands`` (command throughput and latency against a raw asyncpg
baseline), ``bench.rebuild`` (projection rebuild of a generated log against a raw read
baseline), ``bench.queries`` (query latency on the rebuilt read models), ``bench.lag``
(projection lag under a steady command rate) and ``bench.imports`` (the CRM dataset
import). See bench/RESULTS.md for the latest figures.
"""
