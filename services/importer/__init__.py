"""Bring existing deals in, with their history, through the domain: a CRM
sales-opportunities directory (``crm``), a generic deals CSV (``generic``), and the
restore of an event export (``events``). The commands are ``dealtrail import ...``."""
