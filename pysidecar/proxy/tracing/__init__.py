"""HTTP tracing as Envoy does it: the trace decision carried in x-request-id (`decision.py`),
Envoy's zipkin tracer (`zipkin.py`: B3 context, spans, Zipkin v2 JSON) and its reporter
(`reporter.py`: buffered POSTs to the collector cluster)."""
