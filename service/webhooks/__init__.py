"""Signed webhooks: the Standard Webhooks signature, which destinations are allowed, one delivery over HTTP."""
