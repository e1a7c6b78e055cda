"""pysidecar: Istio's sidecar data plane in Python (iptables interception + an Envoy-shaped proxy)."""

__version__ = "0.1.0"
