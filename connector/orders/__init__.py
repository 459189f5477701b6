"""Orders: shop webhooks in, licenses and download grants out."""
