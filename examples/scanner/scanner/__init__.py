"""A small domain scanner: FastAPI creates and deletes scans, a Celery worker runs them.

The app of celery-janitor's origin story (docs: ../README.md). `scan_results` references
`scan_tasks` by foreign key, so a scan deleted while its task waits in Redis makes the worker
crash on a foreign-key violation — until the app installs celery-janitor (`tasks.py`).
"""
