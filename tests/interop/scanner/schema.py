"""The scanner's tables, as the real service has them.

`scan_results.scan_task_id` references `scan_tasks(id)`. Deleting a scan deletes its results
(ON DELETE CASCADE), which is how rows disappear while Celery still holds their work; inserting a
result for a missing scan is the foreign-key violation that crashes the worker's tasks.
"""

from __future__ import annotations

import psycopg

SCHEMA_SQL = """
CREATE TABLE scan_tasks (
    id            bigserial PRIMARY KEY,
    user_id       integer     NOT NULL,
    target_domain text        NOT NULL,
    status        text        NOT NULL DEFAULT 'pending',
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE scan_results (
    id            bigserial PRIMARY KEY,
    scan_task_id  bigint      NOT NULL REFERENCES scan_tasks(id) ON DELETE CASCADE,
    target_domain text        NOT NULL,
    finding       text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
"""


def create_schema(database_url: str) -> None:
    """Create the scanner's tables in an empty database."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(SCHEMA_SQL)
