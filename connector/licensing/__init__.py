"""Licenses: keys, policy, and the API products call."""
