#!/usr/bin/env python3
"""Writes croniter's answers for a table of cron expressions and start
times: the test data `router/src/schedule/croniter_table.json` that the
router's cron evaluation is checked against (EventMQ's scheduler uses
croniter). Run once with the croniter that EventMQ 0.3.13 installs:

    target/venv/bin/python scripts/gen_croniter_table.py > router/src/schedule/croniter_table.json
"""
import json
import sys
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import croniter

EXPRESSIONS = [
    "* * * * *", "*/5 * * * *", "0 * * * *", "30 2 * * *", "15,45 * * * *",
    "0 0 * * *", "0 12 * * 1-5", "0 9 * * MON", "0 9 * * sun", "0 0 1 * *",
    "0 0 31 * *", "0 0 29 2 *", "0 0 L * *", "5 4 * * 0", "5 4 * * 7",
    "0 22 * * 1-5", "23 0-20/2 * * *", "0 0,12 1 */2 *", "0 4 8-14 * *",
    "0 0 1,15 * 3", "0 0 13 * 5", "*/15 9-17 * * 1-5", "0 0 * jan,jul *",
    "0 0 1 1 *", "59 23 31 12 *", "0 */3 * * *", "10-20/5 * * * *",
    "0 0 * * 6,0", "1 2 3 4 *", "0 8 * * 1#2", "0 0 * * L5",
    # six fields: seconds last (croniter's order)
    "* * * * * */10", "* * * * * 30", "0 * * * * 0", "*/2 * * * * 15,45",
    "30 1 * * * 5", "0 0 1 * * 59", "* * * * 1-5 0-10/5", "0 12 * * * 0",
    "15 10 * * mon 30",
]
STARTS_UTC = [
    1700000000,  # 2023-11-14 22:13:20
    1704067199,  # 2023-12-31 23:59:59
    1709164800,  # 2024-02-29 00:00:00
    1719792000,  # 2024-07-01 00:00:00
    1735689600 - 30,  # 2024-12-31 23:59:30
]
# (expression, zone, start) around daylight-saving changes.
DST_CASES = [
    (e, tz, start)
    for e in ["30 2 * * *", "0 * * * *", "*/30 1-3 * * *", "0 3 * * *", "45 1 * * *", "0 0 * * *"]
    for tz, start in [
        ("Europe/Paris", 1711839600 - 86400),   # day before spring forward 2024-03-31
        ("Europe/Paris", 1729990800 - 86400),   # day before fall back 2024-10-27
        ("America/New_York", 1710054000 - 86400),  # 2024-03-10
        ("America/New_York", 1730613600 - 86400),  # 2024-11-03
    ]
]


def answers(expr, tz, start, n=6):
    if tz is None:
        it = croniter.croniter(expr, start)
    else:
        it = croniter.croniter(expr, datetime.fromtimestamp(start, ZoneInfo(tz)))
    return [int(it.get_next(float)) for _ in range(n)]


def main():
    cases = []
    for e in EXPRESSIONS:
        for s in STARTS_UTC:
            cases.append({"expr": e, "tz": None, "start": s, "next": answers(e, None, s)})
    for e, tz, s in DST_CASES:
        cases.append({"expr": e, "tz": tz, "start": s, "next": answers(e, tz, s, n=4)})
    from importlib.metadata import version
    json.dump({"croniter": version("croniter"),
               "cases": cases}, sys.stdout, indent=0)
    print()


if __name__ == "__main__":
    main()
