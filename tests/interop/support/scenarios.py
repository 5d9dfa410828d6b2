"""The mixed deployment most janitor tests run against, built with a real worker.

Orphans in every location: results (a task that failed on the FK, a task whose row was deleted
after it succeeded), `unacked` (countdown tasks held by a worker killed with -9), the default and
the custom queue and their priority sub-lists, plus a row whose task was sent twice. Around them:
live tasks in every location and the unrelated `send_email` everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .world import ScannerWorld


@dataclass
class Mixed:
    rows: list[int]
    deleted: list[int]
    kept: list[int]
    scan_ids: dict[int, list[str]] = field(default_factory=dict)  # row -> task ids published
    email_ids: list[str] = field(default_factory=list)
    countdown_rows: list[int] = field(default_factory=list)

    def ids_for(self, rows: list[int]) -> list[str]:
        return [t for r in rows for t in self.scan_ids.get(r, [])]


def build_mixed(world: ScannerWorld, *, countdown: int = 600) -> Mixed:
    r = world.add_rows(16)
    m = Mixed(rows=r, deleted=[], kept=[])

    def scan(row: int, **options: object) -> str:
        task_id = world.scan(row, **options)
        m.scan_ids.setdefault(row, []).append(task_id)
        return task_id

    # Phase 1 - results. r[1] is deleted before the worker runs it (FAILURE: FK violation);
    # r[2] after it succeeded (SUCCESS whose owner is gone).
    for row in r[0:4]:
        scan(row)
    m.email_ids.append(world.email())
    m.email_ids.append(world.email(queue="scans"))
    world.delete_rows([r[1]])
    world.run_until_done("results", m.ids_for(r[0:4]) + m.email_ids)
    world.delete_rows([r[2]])

    # Phase 2 - unacked. Countdown tasks are pulled by a worker that holds them until their ETA;
    # it is killed with -9, so they stay in `unacked` / `unacked_index`.
    m.countdown_rows = r[4:8]
    scan(r[4], countdown=countdown)
    scan(r[5], countdown=countdown)
    scan(r[6], countdown=countdown, queue="scans")
    scan(r[7], countdown=countdown, queue="scans", priority=9)
    m.email_ids.append(world.email(countdown=countdown))
    world.park_in_unacked(5)
    world.delete_rows([r[5], r[7]])

    # Phase 3 - queued, nobody consuming: default and custom queue, priority sub-lists, and a
    # task sent twice under the same task id.
    scan(r[8])
    resent = scan(r[9])
    scan(r[9], task_id=resent)
    scan(r[10], queue="scans")
    scan(r[11], priority=7)
    scan(r[12], queue="scans", priority=9)
    scan(r[13], priority=3)
    scan(r[14])
    scan(r[15], queue="scans", priority=9)
    m.email_ids.append(world.email(priority=9))
    m.email_ids.append(world.email(queue="scans"))
    m.email_ids.append(world.email(queue="scans", priority=9))
    world.delete_rows([r[9], r[11], r[12], r[15]])

    m.deleted = [r[1], r[2], r[5], r[7], r[9], r[11], r[12], r[15]]
    m.kept = [x for x in r if x not in m.deleted]
    return m
