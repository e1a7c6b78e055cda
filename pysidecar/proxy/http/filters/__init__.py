"""HTTP filters, one module each (Envoy's source/extensions/filters/http); the chain and its
table of filter types is `proxy/http/filter.py`, the router (always last) `router_filter.py`."""
