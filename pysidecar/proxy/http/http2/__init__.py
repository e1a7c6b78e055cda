"""HTTP/2 codecs on h2: `server_codec` (downstream) with its `response_encoder` and
`header_check`. An upstream (client) codec and its pool go here too (see `codec.py`)."""
