"""The browser client: a page, its script and its style, served by the web listener
(net/httpdoor.py) as they are here, with no build step and nothing fetched elsewhere."""
