"""The database plumbing: connections, transactions and the schema's migrations.

Each room keeps its own SQL in its ``store`` modules (``shared.jobs.store``, ``shared.images.store``),
always with parameters, on the helpers of ``connection``.
"""
