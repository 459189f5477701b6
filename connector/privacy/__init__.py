"""Privacy: export and erasure of a customer's data, retention and purge."""
