"""The shop side: everything specific to a shop platform lives here.

``plugin.shop`` holds the neutral dataclasses the connector speaks; ``plugin.woocommerce``
turns WooCommerce's webhooks and REST answers into them.
"""
