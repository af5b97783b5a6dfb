"""Automation rules at work: the evaluator that finds each occurrence and fires it once."""
