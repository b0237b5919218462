#!/usr/bin/env python3
"""SCHEDULE / UNSCHEDULE through EventMQ 0.3.13's own, unmodified client
(`eventmq.client.messages.schedule`). Run it with the EventMQ venv:

    target/venv/bin/python scripts/eventmq_schedule.py --addr tcp://127.0.0.1:47291 \
        --func benchjobs.append_line --args '["/tmp/x", "tick"]' --interval 1 \
        [--cron '* * * * *'] [--headers guarantee,run_count:3] [--unschedule]

Waits for the handshake, sends the one message, then closes with a linger
so it has left this process on exit 0. stdout: the msgid EventMQ's
schedule() returned.
"""
import argparse
import json
import sys

import zmq

from eventmq.client.messages import schedule
from eventmq.sender import Sender

from eventmq_send import wait_connected  # beside this script


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--addr', required=True)
    p.add_argument('--func', required=True, help='pkg.mod.func')
    p.add_argument('--args', default='[]', help='JSON list')
    p.add_argument('--kwargs', default='{}', help='JSON object')
    p.add_argument('--interval', type=int, default=None)
    p.add_argument('--cron', default=None)
    p.add_argument('--headers', default='guarantee',
                   help='comma-separated (EventMQ default: guarantee)')
    p.add_argument('--queue', default='default')
    p.add_argument('--unschedule', action='store_true')
    a = p.parse_args()

    ctx = zmq.Context.instance()
    s = Sender()
    if not wait_connected(s.zsocket, 30.0, lambda: s.connect(a.addr)):
        print('no connection to %s' % a.addr, file=sys.stderr)
        return 2
    msgid = schedule(s, a.func, interval_secs=a.interval,
                     args=tuple(json.loads(a.args)),
                     kwargs=json.loads(a.kwargs),
                     headers=tuple(h for h in a.headers.split(',') if h),
                     queue=a.queue, unschedule=a.unschedule, cron=a.cron)
    if msgid is None:
        print('schedule() refused its arguments', file=sys.stderr)
        return 3
    print(msgid)
    s.zsocket.close(linger=10000)
    ctx.term()
    return 0


if __name__ == '__main__':
    sys.exit(main())
