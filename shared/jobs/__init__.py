"""Jobs: the service that creates and enqueues them, their SQL, results, progress, reports and comparisons."""

from shared.jobs import (
    comparison,
    comparison_store,
    export,
    export_store,
    fair_share,
    folder_store,
    lifecycle_store,
    progress,
    queries,
    reports,
    results,
    service,
    shadow_store,
    statistics,
    store,
    webhooks,
)

__all__ = [
    "comparison",
    "comparison_store",
    "fair_share",
    "folder_store",
    "lifecycle_store",
    "export",
    "export_store",
    "progress",
    "queries",
    "reports",
    "results",
    "service",
    "shadow_store",
    "statistics",
    "store",
    "webhooks",
]
