"""Observability (layer 3): Prometheus metrics bound to an injected registry, structlog
logging, the worker's ``/metrics`` HTTP endpoint, the process clock that wall times
count from, and a reader of the PromQL that ``deploy/`` ships. Imports only the layers
below (base, item, config).
"""
