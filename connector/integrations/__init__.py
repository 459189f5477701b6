"""Outside systems behind small Protocols, picked by config."""
