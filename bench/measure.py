"""Redis-side measurements and the results table, for bench/run.

Why this exists: wall time and peak RSS come from `/usr/bin/time -v`, but what the janitor costs
the *Redis server* (how many commands it sends, whether any single command or Lua call blocks
the server) can only be read from the server. Subcommands:

- `reset --port P`: log every command in SLOWLOG (`slowlog-log-slower-than 0`, so its entries
  are the exact list of commands clients sent, each with its execution time), reset it, reset
  LATENCY and INFO stats (`CONFIG RESETSTAT`).
- `collect --port P`: after a janitor command, print JSON: the commands it sent (count, by
  name, EVAL/EVALSHA calls), the commands Redis executed including those run inside Lua
  (`INFO commandstats`), the slowest single command and its duration, p50/p99, how many took
  over 10 ms, and `LATENCY LATEST`.
- `report DIR`: read what bench/run left in DIR and print the markdown report.

The bench's own commands (its connections are named `cj-bench`) are left out of every count.
Only the throw-away server bench/run started is ever touched.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import redis

BENCH_CLIENT = "cj-bench"  # CLIENT SETNAME of this script's connections
# What this script itself runs before `INFO commandstats` is read (so it is counted there).
OWN_STATS = {"latency|latest", "client|setname", "config|set", "config|resetstat"}
OVER_MS = 10
COMMANDS = ("status", "tasks", "cleanup")


def connect(port: int) -> redis.Redis:
    if port == 6379:
        raise SystemExit("refusing to touch the machine's Redis on 6379")
    return redis.Redis(host="127.0.0.1", port=port, client_name=BENCH_CLIENT)


def reset(port: int) -> None:
    r = connect(port)
    r.config_set("slowlog-max-len", 5_000_000)
    r.config_set("slowlog-log-slower-than", 0)
    r.config_set("latency-monitor-threshold", OVER_MS)
    r.slowlog_reset()
    r.execute_command("LATENCY", "RESET")
    r.config_resetstat()


def _percentile(sorted_values: list[int], q: float) -> int:
    if not sorted_values:
        return 0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def script_names() -> dict[str, str]:
    """SHA1 of each of the janitor's Lua scripts -> its file name (EVALSHA names scripts so)."""
    lua = Path(__file__).resolve().parent.parent / "crates" / "janitor-engine" / "lua"
    return {hashlib.sha1(p.read_bytes()).hexdigest(): p.stem for p in sorted(lua.glob("*.lua"))}


def collect(port: int) -> dict[str, Any]:
    r = connect(port)
    # LATENCY first: reading a long SLOWLOG is itself a slow command.
    latency = r.execute_command("LATENCY", "LATEST")
    stats = r.info("commandstats")
    memory = r.info("memory")
    entries = r.slowlog_get(-1)
    scripts = script_names()
    sent: list[tuple[int, str]] = []  # commands clients sent: (microseconds, name)
    inner = 0  # commands run inside Lua scripts (SLOWLOG logs them too, from client "?:0")
    for e in entries:
        command = e["command"]
        words = (command if isinstance(command, bytes) else str(command).encode()).split(b" ")
        name = words[0].decode().lower()
        client = e.get("client_name") or b""
        if (client.decode() if isinstance(client, bytes) else client) == BENCH_CLIENT:
            continue
        address = e.get("client_address") or b""
        if (address.decode() if isinstance(address, bytes) else address) == "?:0":
            inner += 1
            continue
        if name in ("evalsha", "eval"):
            sha = words[1].decode() if name == "evalsha" and len(words) > 1 else ""
            name = f"EVALSHA {scripts.get(sha, sha[:8])}" if sha else "EVAL"
        sent.append((int(e["duration"]), name))
    durations = sorted(d for d, _n in sent)
    by_name: dict[str, int] = {}
    slowest_by_name: dict[str, int] = {}
    for d, name in sent:
        by_name[name] = by_name.get(name, 0) + 1
        slowest_by_name[name] = max(slowest_by_name.get(name, 0), d)
    slowest = max(sent, default=(0, ""))
    executed = {
        k.removeprefix("cmdstat_"): int(v["calls"])
        for k, v in stats.items()
        if k.removeprefix("cmdstat_") not in OWN_STATS
    }
    return {
        "client_commands": len(sent),
        "client_commands_by_name": dict(sorted(by_name.items(), key=lambda kv: -kv[1])),
        "slowest_us_by_name": dict(sorted(slowest_by_name.items(), key=lambda kv: -kv[1])),
        "script_calls": sum(n for k, n in by_name.items() if k.startswith("EVAL")),
        "commands_inside_scripts": inner,
        "executed_incl_lua": sum(executed.values()),
        "executed_by_name": dict(sorted(executed.items(), key=lambda kv: -kv[1])),
        "busy_us": sum(durations),
        "max_us": slowest[0],
        "max_command": slowest[1],
        "p50_us": _percentile(durations, 0.50),
        "p99_us": _percentile(durations, 0.99),
        "over_10ms": sum(1 for d in durations if d > OVER_MS * 1000),
        "over_10ms_by_name": {
            n: sum(1 for d, m in sent if m == n and d > OVER_MS * 1000)
            for n in by_name
            if any(m == n and d > OVER_MS * 1000 for d, m in sent)
        },
        "latency_latest": [
            [x.decode() if isinstance(x, bytes) else x for x in row] for row in latency
        ],
        "used_memory_bytes": memory["used_memory"],
    }


# -- report -----------------------------------------------------------------------------------

TIME_FIELDS = {
    "wall": re.compile(r"Elapsed \(wall clock\) time.*: (\S+)"),
    "user": re.compile(r"User time \(seconds\): (\S+)"),
    "sys": re.compile(r"System time \(seconds\): (\S+)"),
    "rss_kb": re.compile(r"Maximum resident set size \(kbytes\): (\d+)"),
    "status": re.compile(r"Exit status: (\d+)"),
}


def _wall_seconds(text: str) -> float:
    parts = [float(p) for p in text.split(":")]
    seconds = 0.0
    for p in parts:
        seconds = seconds * 60 + p
    return seconds


def parse_time(path: Path) -> dict[str, float]:
    text = path.read_text()
    out: dict[str, float] = {}
    for name, pattern in TIME_FIELDS.items():
        m = pattern.search(text)
        if m is None:
            continue
        out[name] = _wall_seconds(m.group(1)) if name == "wall" else float(m.group(1))
    return out


def _loc(counts: dict[str, int]) -> str:
    return "/".join(str(counts.get(k, 0)) for k in ("queue", "unacked", "result"))


def outcome(command: str, data: Any, expected: dict[str, int]) -> str:
    if data is None:
        return "no JSON output"
    if command == "status":
        t = data["tasks"]
        ok = t["orphaned_by_location"] == expected
        return (
            f"in_redis {t['in_redis']}, orphaned {t['orphaned']} "
            f"({'= expected' if ok else 'EXPECTED ' + _loc(expected)})"
        )
    if command == "tasks":
        counts = {"queue": 0, "unacked": 0, "result": 0}
        for row in data:
            counts[row["location"]] += 1
        ok = counts == expected
        return f"{len(data)} rows ({'= expected' if ok else 'EXPECTED ' + _loc(expected)})"
    removed = data["removed"]
    verdict = "= expected" if removed == expected else "EXPECTED " + _loc(expected)
    return f"removed q/u/r {_loc(removed)} ({verdict}), changed {data['skipped']['changed']}"


def report(out_dir: Path) -> str:
    meta = json.loads((out_dir / "run.json").read_text())
    lines = [
        f"# celery-janitor benchmark, {meta['date']}",
        "",
        f"Binary: `{meta['binary']}` ({meta['version']}); redis-server {meta['redis']}; "
        f"PostgreSQL {meta['postgres']}; {meta['cpus']} CPUs; raw data in `{meta['raw']}`.",
        "Entries: N queue messages (5% unowned `send_email`, a third in a priority sub-list), "
        "N/10 `unacked`, N/5 results. `orphans` is the fraction of owner rows missing.",
        "",
        "## Datasets",
        "",
        "| N | orphans | queue | unacked | results | owner rows | expected orphans q/u/r "
        "| Redis keys | Redis memory | generated in |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    runs = sorted(
        (p for p in out_dir.iterdir() if (p / "generate.json").exists()),
        key=lambda p: (
            json.loads((p / "params.json").read_text())["fraction"],
            json.loads((p / "generate.json").read_text())["n"],
        ),
    )
    for run in runs:
        g = json.loads((run / "generate.json").read_text())
        frac = json.loads((run / "params.json").read_text())["fraction"]
        lines.append(
            f"| {g['n']} | {frac} | {g['queue_messages']} | {g['unacked']} | {g['results']} "
            f"| {g['rows']} | {_loc(g['expected_orphans'])} | {g['redis_keys']} "
            f"| {g['redis_used_memory_bytes'] / 2**20:.1f} MiB | {g['total_seconds']} s |"
        )
    lines += [
        "",
        "## Runs",
        "",
        "`cmds`: commands the janitor sent (pipelined ones count one each); `incl. Lua`: "
        "commands Redis executed, including those inside the janitor's scripts; `scripts`: "
        "EVALSHA calls; `slowest`: the longest single command Redis executed for the janitor "
        f"(a Lua call counts as one); `>{OVER_MS} ms`: how many took longer; `Redis busy`: "
        "the server's execution time summed over the janitor's commands (SLOWLOG).",
        "",
        "| N | orphans | command | wall | user+sys | peak RSS | cmds | incl. Lua | scripts "
        f"| Redis busy | p99 | slowest | >{OVER_MS} ms | outcome |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        g = json.loads((run / "generate.json").read_text())
        frac = json.loads((run / "params.json").read_text())["fraction"]
        for command in COMMANDS:
            tpath = run / f"{command}.time"
            if not tpath.exists():
                continue
            t = parse_time(tpath)
            rs = json.loads((run / f"{command}.redis.json").read_text())
            try:
                data = json.loads((run / f"{command}.json").read_text())
            except (OSError, json.JSONDecodeError):
                data = None
            label = {
                "status": "`status --json`",
                "tasks": "`tasks --orphaned --json`",
                "cleanup": "`cleanup-orphaned --json --grace 0`",
            }[command]
            failed = "" if t.get("status", 0) == 0 else f" **exit {int(t['status'])}**"
            cells = [
                str(g["n"]),
                str(frac),
                label + failed,
                f"{t.get('wall', 0):.2f} s",
                f"{t.get('user', 0) + t.get('sys', 0):.2f} s",
                f"{t.get('rss_kb', 0) / 1024:.1f} MiB",
                str(rs["client_commands"]),
                str(rs["executed_incl_lua"]),
                str(rs["script_calls"]),
                f"{rs['busy_us'] / 1e6:.2f} s",
                f"{rs['p99_us'] / 1000:.2f} ms",
                f"{rs['max_us'] / 1000:.1f} ms ({rs['max_command']})",
                str(rs["over_10ms"]),
                outcome(command, data, g["expected_orphans"]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    for name in ("reset", "collect"):
        p = sub.add_parser(name)
        p.add_argument("--port", type=int, required=True)
    p = sub.add_parser("report")
    p.add_argument("dir", type=Path)
    args = parser.parse_args()
    if args.action == "reset":
        reset(args.port)
    elif args.action == "collect":
        print(json.dumps(collect(args.port), indent=1))
    else:
        sys.stdout.write(report(args.dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
