"""`pysidecar explain`: the decision trace of one connection or request, step by step, from the
pod's iptables rules to the endpoint, made by the proxy's own decision functions."""
