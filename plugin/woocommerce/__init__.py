"""WooCommerce: webhook checks and payload parsing, the REST client, the connect handshake."""
