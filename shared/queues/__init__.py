"""The queues on Redis: Celery's bulk lane (broker) and the plain upload list (uploads)."""

from shared.queues import broker, uploads

__all__ = ["broker", "uploads"]
