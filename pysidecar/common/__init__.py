"""Pure pieces that config, proxy and observe all use, low enough for each to import downward
(Envoy's source/common): they import the model and each other, never config, proxy or observe.

    stream_info.py    what happened to one request / connection (the record every reader reads)
    access_format.py  Envoy's access log command operators, compiled once per format
    workload.py       who this sidecar serves: the workload metadata Istio's metrics carry
    envoy_json.py     the model rendered as Envoy's JSON (export, config_dump), with
    envoy_json_tls.py its TLS pieces
    tls_context.py    ssl.SSLContext from the model's TLS contexts (checked at load, used by
                      the listeners)
"""
