"""Mails to buyers: composed from templates, stored encrypted, sent by the configured backend."""
