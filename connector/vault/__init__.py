"""Secrets at rest: the master keyring, the Encrypted column type, keyed hashes."""
