"""The scanner's two tables and a connection helper (PostgreSQL, `DATABASE_URL`)."""

from __future__ import annotations

import os

import psycopg

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS scan_tasks (
    id            bigserial PRIMARY KEY,
    user_id       integer     NOT NULL,
    target_domain text        NOT NULL,
    status        text        NOT NULL DEFAULT 'pending',
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS scan_results (
    id            bigserial PRIMARY KEY,
    scan_task_id  bigint      NOT NULL REFERENCES scan_tasks(id) ON DELETE CASCADE,
    target_domain text        NOT NULL,
    finding       text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
"""


def database_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if not url:
        raise RuntimeError("set DATABASE_URL to the scanner's PostgreSQL database")
    return url


def connect(autocommit: bool = True) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(database_url(), autocommit=autocommit)


def create_schema() -> None:
    with connect() as conn:
        conn.execute(SCHEMA_SQL)
