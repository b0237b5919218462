"""Schemathesis hooks for scripts/schemathesis.sh (loaded via SCHEMATHESIS_HOOKS).

`wait` (GET /v1/jobs/{id}/result, GET /v1/events) may be 0 to 60 seconds,
and with no job manager running nothing ends: a generated `wait=47` would
hold its request for 47 s. A valid wait over 1 is sent as 0 or 1 (its
parity), so waiting is still exercised; values outside 0..60 and
non-integers are sent as generated (the server must refuse them with 400).
"""

import schemathesis


@schemathesis.hook
def before_call(context, case, kwargs):
    query = case.query
    if not isinstance(query, dict):
        return
    wait = query.get("wait")
    if isinstance(wait, bool):
        return
    if isinstance(wait, int) and 1 < wait <= 60:
        query["wait"] = wait % 2
    elif isinstance(wait, str) and wait.isascii() and wait.isdigit() and 1 < int(wait) <= 60:
        # The coverage phase sends some values as the text that goes on the wire.
        query["wait"] = str(int(wait) % 2)
