"""Consumers of the log that push it out: webhooks (and the other feeds beside them)."""
