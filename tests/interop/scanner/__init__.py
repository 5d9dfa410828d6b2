"""A small Celery app shaped like the domain-scanning service celery-janitor was written for.

`scan_tasks` rows own `scanner.scan_domain_task(task_id, user_id, target_domain, config)`
messages; the task writes a `scan_results` row that references its `scan_tasks` row, so running
the task of a deleted row fails with a real `psycopg.errors.ForeignKeyViolation`: the bug
celery-janitor exists to prevent. `scanner.send_email` is an unrelated task that owns nothing.

The worker imports `scanner.app` (`celery -A scanner.app worker`), which builds the app from the
environment; tests build producer apps with `scanner.app.make_app(...)` and explicit settings.
"""
