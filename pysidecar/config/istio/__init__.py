"""Istio's configuration front end: MeshConfig, ServiceEntry, VirtualService, DestinationRule,
Sidecar and Kubernetes Service / EndpointSlice / Endpoints, compiled into a `Bootstrap`.

Promises:
- One module per kind parses its documents into frozen dataclasses (`documents` dispatches by
  `kind`); every error is a `ConfigError` naming the file, the YAML path and the resource
  (`VirtualService default/httpbin-ext`).
- `compile.compile_config(IstioConfig)` is istiod's sidecar config generator in miniature: the
  same listener, cluster, route configuration and virtual host names and defaults, so the
  admin dump and `pysidecar envoy-config` read like `istioctl proxy-config`.
- No I/O besides reading the files given; no asyncio.
"""
