"""The Flower ClientApp: one node of the federation, hosting one site or a site group."""
