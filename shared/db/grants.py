"""What the web's and the workers' database roles may do, table by table and column by column.

deploy/postgres-init creates two group roles of fixed names (NOLOGIN) and makes the web's and the
workers' login roles members of them. The owner of the tables grants here, after every migration
(``schema.migrate``), so that a table or column a migration adds is covered at once; where the
group roles do not exist (a developer's database, the tests' scratch ones) nothing is granted.

Everything either role writes is listed below with the statement that needs it; neither may write
operators, API tokens, models or aliases beyond the single columns named, and the web deletes nothing
but a stale comparison (an upload is undone by ``mnistq_undo_upload``, migration 0012).
"""

from __future__ import annotations

import sqlalchemy

# The groups granted to: fixed names (mnist_web_access, mnist_worker_access) that deploy/postgres-init's
# script creates and puts the web's and the workers' login roles in.

GRANTS = """
DO $grants$
BEGIN
-- only the tables' owner (or a superuser) grants: anyone else at the head has nothing to do
IF NOT EXISTS (SELECT FROM pg_tables WHERE schemaname = 'public' AND tablename = 'jobs'
               AND pg_has_role(current_user, tableowner, 'USAGE')) THEN
    RETURN;
END IF;
IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'mnist_web_access') THEN
    REVOKE ALL ON ALL TABLES IN SCHEMA public FROM mnist_web_access;
    -- the pages, the API, the sign-in and the health checks read
    GRANT SELECT ON ALL TABLES IN SCHEMA public TO mnist_web_access;
    GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO mnist_web_access;
    -- an upload (jobs.store.create_named_upload_job) and an operator's job (create_job_from_selection),
    -- with its batches, its first slices taken (jobs.lifecycle_store.take_batches) and its cancel (cancel_job)
    GRANT INSERT ON input_data, jobs, job_batches TO mnist_web_access;
    GRANT UPDATE (enqueued_batches, status, cancelled_at, cancelled_by, finished_at) ON jobs TO mnist_web_access;
    -- an upload Redis refused is undone while it has no answer (jobs.store.delete_upload_job): by this
    -- one function, with its owner's rights, so the web deletes no job, image, prediction or statistic itself
    IF to_regprocedure('mnistq_undo_upload(bigint, bigint)') IS NOT NULL THEN  -- from migration 0012 on
        GRANT EXECUTE ON FUNCTION mnistq_undo_upload(BIGINT, BIGINT) TO mnist_web_access;
    END IF;
    -- the compare page stores the aggregate of two finished jobs, replacing one of older counts
    -- (jobs.comparison_store.store_aggregate)
    GRANT INSERT, UPDATE ON job_comparisons, job_comparison_pairs TO mnist_web_access;
    GRANT DELETE ON job_comparisons TO mnist_web_access;
    -- a bearer token's last use (operators.store.token_operator), a sign-out (end_sessions)
    GRANT UPDATE (last_used_at) ON api_tokens TO mnist_web_access;
    GRANT UPDATE (session_generation) ON operators TO mnist_web_access;
END IF;
IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'mnist_worker_access') THEN
    REVOKE ALL ON ALL TABLES IN SCHEMA public FROM mnist_worker_access;
    -- images, jobs and models to predict with
    GRANT SELECT ON ALL TABLES IN SCHEMA public TO mnist_worker_access;
    GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO mnist_worker_access;
    -- jobs.results.store_results (predictions, failures, statistics, mistakes), record_attempt, shadow_store
    GRANT INSERT ON predictions, job_failures, job_mistakes, shadow_predictions TO mnist_worker_access;
    GRANT INSERT, UPDATE ON job_statistics, batch_attempts TO mnist_worker_access;
    -- the job's counters (store_results), the sweeper's resume (jobs.store.mark_resumed), a sliced job's next
    -- slice (jobs.lifecycle_store.take_batches) and its end, claimed once (claim_end: its batches go)
    GRANT UPDATE (done_count, failed_count, started_at, progressed_at, status, finished_at, enqueued_batches,
        announced_at) ON jobs TO mnist_worker_access;
    GRANT DELETE ON job_batches TO mnist_worker_access;
    -- each attempt to deliver a job's webhook (jobs.lifecycle_store.record_delivery)
    GRANT INSERT ON webhook_deliveries TO mnist_worker_access;
END IF;
END
$grants$;
"""


def apply(connection: sqlalchemy.Connection) -> None:
    """Grant the groups what they need of the tables as they now are: run after every migration."""
    connection.exec_driver_sql(GRANTS)
