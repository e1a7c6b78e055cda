"""HTTP/1.1 codecs on httptools: downstream (`server_codec` with `request_decoder` and
`response_encoder`), upstream (`client_codec`) and its per-host pool (`conn_pool`); `wire` is
the byte encoding both sides share."""
