"""``python -m celery_janitor._startup``: a worker's start-up cleanup, in a process of its own
(``install`` starts it from ``worker_init``), so no native thread lives in a prefork parent that
forks later. Runs ``cleanup-orphaned --startup --json`` with the app's settings (passed in
``CELERY_JANITOR_STARTUP`` as JSON: ``config_path``, ``app_defaults``) and prints its JSON."""

from __future__ import annotations

import json
import os
import sys

from celery_janitor import _native


def main() -> int:
    payload = json.loads(os.environ.get("CELERY_JANITOR_STARTUP") or "{}")
    argv = ["celery-janitor"]
    if payload.get("config_path"):
        argv += ["--config", payload["config_path"]]
    argv += ["cleanup-orphaned", "--startup", "--json"]
    try:
        out = _native.run_json_for_app(argv, payload.get("app_defaults"))
    except _native.JanitorError as err:
        print(f"{err.kind}: {err}" + (f" ({err.hint})" if err.hint else ""), file=sys.stderr)
        return int(err.code) or 1
    report = json.loads(out)
    print(json.dumps(report, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
