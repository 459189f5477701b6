"""The owner's side: /admin pages and the /api/v1/admin JSON API."""
