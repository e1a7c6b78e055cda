"""The HTTP path, split as Envoy splits it (each file one job, Envoy's names):

    codec.py            the declared seams (typing.Protocol): DownstreamCodec, UpstreamCodec,
                        ResponseDecoder, ConnPool / PoolCallbacks
    http1/              HTTP/1.1 on httptools: server_codec (downstream connection) with
                        request_decoder (parsing) and response_encoder (framing); client_codec
                        (upstream connection), conn_pool (its per-host pool), wire (bytes)
    http2/              HTTP/2 on h2: server_codec with response_encoder and header_check
    downstream.py       what every downstream connection shares; where a request is accounted
    active_stream.py    the connection manager's stream: request → filter chain → response
    stream_state.py     its lifecycle: states and transitions as a table
    filter.py           the HTTP filter interface and the chain (filters/: fault, lua)
    router_filter.py    the router: route → cluster → attempts, retries, timeouts
    upstream_request.py one attempt on a pooled connection
    conn_pool.py        a worker's pools, of the kind each cluster's protocol needs
    route_table.py      which route, which cluster (pure)
    local_reply.py      which local reply (status, flags, body, details) (pure)
    retry.py            whether and when an attempt is retried (pure)
    headers.py, edge.py, request_id.py, compiled.py: header operations, use_remote_address,
                        x-request-id, a config made ready for the data path
"""
