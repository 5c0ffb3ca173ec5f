"""The data layer: every SQL statement of the system lives in this package, always with parameters.

One module per kind of data; callers import the module they need (``from shared.db import jobs``)
and pass a psycopg2 connection:

- ``connection``  connecting, transactions, the one query helper
- ``prepared``    statements planned once per connection (the upload path's and the store's)
- ``schema``      migrations (Alembic, plain SQL) applied by ``producer init-db``
- ``copy_format`` PostgreSQL's binary COPY format, as pure functions
- ``images``      stored images: insert, fetch, select
- ``jobs``        jobs and their image lists; upload jobs
- ``results``     predictions, failures and attempts, stored with the job's counters
- ``statistics``  per-job label x prediction counts and mistakes, kept in the same transaction
- ``progress``    LISTEN/NOTIFY: waiting for a job without polling
- ``queries``     the read side of reports and pages
- ``comparisons`` two jobs' predictions of the same images, counted per (true label, A's, B's)
- ``bulk_load``   bulk COPY of image rows and table sizes, for the scale benchmark
"""
