"""Prometheus metrics of the explainer: explanation latency by method, dataset evaluations and searches."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

_EXPLAIN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_RUN_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)


class ExplainerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.explain_seconds = Histogram("zdm_explainer_explain_seconds", "Server-side time of an Explain call",
                                         ["method"], buckets=_EXPLAIN_BUCKETS, registry=r)
        self.evaluations = Counter("zdm_explainer_evaluations_total", "EvaluateDataset runs, by outcome",
                                   ["outcome"], registry=r)
        self.evaluated_images = Counter("zdm_explainer_evaluated_images_total",
                                        "Images explained and scored by EvaluateDataset (once per model)", registry=r)
        self.evaluation_seconds = Histogram("zdm_explainer_evaluation_seconds", "Wall time of a finished evaluation",
                                            buckets=_RUN_BUCKETS, registry=r)
        self.searches = Counter("zdm_explainer_searches_total", "SearchDefaults runs, by outcome", ["outcome"],
                                registry=r)
