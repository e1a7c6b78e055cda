"""`pysidecar inject`: add the sidecar and its init container to Kubernetes workloads.

Like `istioctl kube-inject`, offline: YAML in, YAML out. The containers come from
`template.yaml` (data, shipped with the package); `annotations.py` turns the pod's
`traffic.sidecar.istio.io/*` annotations into `pysidecar init` flags exactly as Istio's injection
template does; `pod.py` decides and lays out one pod; `objects.py` finds the pods in a YAML
stream; `cli.py` is the command; `wait.py` is `pysidecar wait`, the postStart hook that holds
the application until the proxy is ready.
"""
