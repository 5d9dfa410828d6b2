"""Helpers for the interop suite: private servers, a real Celery worker, the janitor binary,
byte-exact Redis snapshots and an independent model of what Celery left in Redis."""
