"""HTTP/2 codecs: `server_codec` (downstream) with its `response_encoder` over a `session`
(libnghttp2 through `nghttp2_session`, or h2 through `h2_session`); the upstream (client) codec
`client_codec` and its pool `conn_pool`, on h2 (see `codec.py`)."""
