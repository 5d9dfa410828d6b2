# Stubs of the extension module (crates/janitor-py/src/lib.rs), checked against it by
# `python -m mypy.stubtest celery_janitor._native` in scripts/test.

from typing import Any, final

__all__ = ["Guard", "JanitorError", "__version__", "main", "run_json", "run_json_for_app"]

__version__: str

class JanitorError(Exception):
    message: str
    code: int
    hint: str | None
    kind: str
    def __init__(
        self, message: str, code: int = 1, hint: str | None = None, kind: str = "failed"
    ) -> None: ...

def main(argv: list[str]) -> int: ...
def run_json(argv: list[str]) -> str: ...
def run_json_for_app(argv: list[str], app_defaults: dict[str, Any] | None = None) -> str: ...

@final
class Guard:
    def __new__(
        cls,
        config_path: str | None = None,
        app_defaults: dict[str, Any] | None = None,
        timeout_seconds: float = 5.0,
    ) -> Guard: ...
    @property
    def grace_seconds(self) -> float: ...
    @property
    def on_error(self) -> str: ...
    @property
    def cleanup_on_startup(self) -> bool: ...
    def owns(self, task_name: str) -> bool: ...
    def check(
        self, task_id: str, task_name: str, args_json: str, kwargs_json: str
    ) -> dict[str, Any]: ...
    def record(
        self,
        kind: str,
        task_id: str,
        task_name: str,
        owner_table: str | None = None,
        owner_id: str | None = None,
        reason: str = "",
        node: str = "",
    ) -> dict[str, Any]: ...
    def stats(self) -> dict[str, Any]: ...
    def broker_time(self) -> float: ...
    def revoke(
        self,
        task_ids: list[str],
        owners: list[tuple[str, str]],
        undo: bool = False,
        actor: str | None = None,
    ) -> dict[str, Any]: ...
