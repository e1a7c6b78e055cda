"""pysidecar: Istio's sidecar data plane in Python (iptables interception + an Envoy-shaped proxy)."""

from pysidecar import native

__version__ = "0.1.0"

# The compiled data path when its build is fresh, else the same modules as plain Python.
native.install()
