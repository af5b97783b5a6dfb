"""Webhooks: Standard Webhooks signing, the outbound address guard, and delivery."""
