"""A real Celery worker (`python -m celery -A scanner.app:app worker`) run as a subprocess.

Its output goes to a log file the test can read. It is stopped with SIGTERM (warm shutdown) or
killed with SIGKILL, which leaves its held messages in `unacked` exactly as a crash would.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .waiting import wait_until

INTEROP_DIR = Path(__file__).resolve().parent.parent
_counter = itertools.count(1)


class CeleryWorker:
    def __init__(
        self,
        *,
        broker_url: str,
        database_url: str,
        log_path: Path,
        queues: Sequence[str] = ("celery", "scans"),
        result_extended: bool = True,
        accept_pickle: bool = False,
        track_started: bool = False,
        visibility_timeout: float | None = None,
        prefetch_multiplier: int = 4,
        pool: str = "solo",
        concurrency: int | None = None,
        extra_env: dict[str, str] | None = None,
        python: str | None = None,
    ) -> None:
        self.log_path = log_path
        self.name = f"scanner{next(_counter)}-{os.getpid()}@localhost"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CELERY_", "SCANNER_"))
            and k not in ("DATABASE_URL", "REDIS_URL", "C_FORCE_ROOT")
        }
        env.update(
            CELERY_BROKER_URL=broker_url,
            CELERY_RESULT_BACKEND=broker_url,
            DATABASE_URL=database_url,
            SCANNER_RESULT_EXTENDED="1" if result_extended else "0",
            SCANNER_ACCEPT_PICKLE="1" if accept_pickle else "0",
            SCANNER_TRACK_STARTED="1" if track_started else "0",
            PYTHONPATH=os.pathsep.join(
                [str(INTEROP_DIR)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
            ),
            PYTHONUNBUFFERED="1",
        )
        if accept_pickle and os.geteuid() == 0:
            # Celery refuses to run a pickle-accepting worker as root unless told to; CI runs
            # as root. The worker only ever sees messages these tests published.
            env["C_FORCE_ROOT"] = "1"
        if visibility_timeout is not None:
            env["SCANNER_VISIBILITY_TIMEOUT"] = str(visibility_timeout)
        env.update(extra_env or {})
        self.env = env
        # `python`: another venv's interpreter (e.g. Celery 5.3's, CJ_CELERY53_PYTHON).
        self.argv = [
            python or sys.executable,
            "-m",
            "celery",
            "-A",
            "scanner.app:app",
            "worker",
            f"--pool={pool}",
            "--loglevel=INFO",
            "-n",
            self.name,
            "-Q",
            ",".join(queues),
            "--prefetch-multiplier",
            str(prefetch_multiplier),
            "--without-mingle",
            "--without-gossip",
        ]
        if concurrency is not None:
            self.argv.append(f"--concurrency={concurrency}")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> CeleryWorker:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(
                self.argv,
                cwd=INTEROP_DIR,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait until the worker logs that it is consuming."""

        def ready() -> bool:
            if not self.running:
                raise AssertionError(f"worker exited early:\n{self.log()}")
            return " ready." in self.log()

        wait_until(
            ready, timeout=timeout, what=f"worker {self.name} to be ready", describe=self.log
        )

    def kill(self) -> None:
        """SIGKILL: no warm shutdown, held messages stay in `unacked`."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 20) -> None:
        """Warm shutdown (SIGTERM); SIGKILL if it does not exit in time."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
