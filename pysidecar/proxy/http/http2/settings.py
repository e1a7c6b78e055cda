"""The SETTINGS the HTTP/2 downstream codec announces, and its defaults where the HCM's
http2_protocol_options says nothing.

Promises: pysidecar's windows are 1 MiB per stream and 4 MiB per connection (Envoy's are
256 MiB: what a client may send unasked, and so what a slow upstream would make us hold);
max_concurrent_streams defaults to Envoy's 2^31 - 1; `server_settings` builds the frame's
values (the header list size is the HCM's max_request_headers_kb).
"""

from __future__ import annotations

import h2.settings

DEFAULT_STREAM_WINDOW = 1 << 20
DEFAULT_CONNECTION_WINDOW = 4 << 20
DEFAULT_MAX_CONCURRENT_STREAMS = 2**31 - 1  # Envoy's
H2_DEFAULT_WINDOW = 65535  # the connection window every HTTP/2 connection starts with


def server_settings(streams: int, window: int, header_list: int) -> h2.settings.Settings:
    return h2.settings.Settings(
        client=False,
        initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: streams,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: header_list,
        },
    )
