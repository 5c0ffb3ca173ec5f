"""The queues on Redis: Celery's bulk lane (broker), the plain upload list (uploads) and its consumers' heartbeats."""

from shared.queues import broker, heartbeat, uploads

__all__ = ["broker", "heartbeat", "uploads"]
