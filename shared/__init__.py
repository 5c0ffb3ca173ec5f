"""What the producer, the worker and the web share, one room per concept.

``config`` (every setting) and ``digits`` (leaf constants) sit at the top; each concept is a room
(``jobs``, ``images``, ``models``, ``operators``, ``queues``, ``observability``) whose modules are
named for their role (``jobs.store``, ``images.store``). ``db`` is connection and migrations only;
``training`` is never imported by serving code.
"""
