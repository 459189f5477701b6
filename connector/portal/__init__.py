"""The buyer's private portal page."""
