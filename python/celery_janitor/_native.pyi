# Stubs of the extension module (crates/janitor-py/src/lib.rs), checked against it by
# `python -m mypy.stubtest celery_janitor._native` in scripts/test.

__all__ = ["JanitorError", "__version__", "main", "run_json"]

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
