"""The HTTP/1.1 data path: the HTTP connection manager, its router and upstream pools.

Modules, each with one job: `router` (pure route matching), `headers` (pure header
operations), `retry` (pure retry decisions), `codec` (wire encoding), `local_reply` (Envoy's
own responses), `compiled` (a config made ready for the hot path), `pool` (upstream
connections), `stream` (one request through the router), `conn_manager` (the downstream
connection).
"""
