#!/usr/bin/env python3
"""Send jobs through EventMQ 0.3.13's own, unmodified client code.

Run it with the EventMQ venv (scripts/setup-venv.sh):

    target/venv/bin/python scripts/eventmq_send.py --addr tcp://127.0.0.1:47291 \
        --queue default --path benchjobs --callable add --args '[2,3]' \
        [--count N] [--reply-requested] [--expect-replies K --wait S]

Builds a DEALER with eventmq.sender.Sender (identity = uuid4 string), sends
N REQUESTs with eventmq.client.messages.send_request, then closes the socket
with a linger and terminates the zmq context: zmq_ctx_term() returns only
once every queued message has been written to the TCP connection (or the
linger expired), so on exit 0 the jobs really left this process.

stdout: one JSON summary line. Exit codes: 0 ok; 2 could not connect
within --connect-timeout; 3 linger expired with messages possibly unsent;
4 fewer than --expect-replies REPLY messages arrived within --wait.
"""
import argparse
import json
import sys
import time

import zmq
from zmq.utils.monitor import recv_monitor_message

from eventmq.client.messages import send_request
from eventmq.sender import Sender
from eventmq.utils.messages import send_emqp_message
from json import dumps as serialize  # as eventmq.client.messages does


def wait_connected(sock, timeout_s, connect):
    """Connects (`connect()`), True once the ZMTP handshake with the peer
    succeeded. The monitor is attached first: a handshake that completes
    before it would otherwise go unseen (and the wait time out)."""
    mon = sock.get_monitor_socket(
        zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_CONNECTED)
    connect()
    deadline = time.monotonic() + timeout_s
    ok = False
    try:
        while not ok:
            left = deadline - time.monotonic()
            if left <= 0 or not mon.poll(int(left * 1000)):
                break
            ok = recv_monitor_message(mon)['event'] == \
                zmq.EVENT_HANDSHAKE_SUCCEEDED
    finally:
        sock.disable_monitor()
        mon.close(linger=0)
    return ok


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--addr', required=True,
                   help='router frontend, e.g. tcp://127.0.0.1:47291')
    p.add_argument('--queue', default='default')
    p.add_argument('--path', required=True,
                   help='dotted module path, or "module:Class"')
    p.add_argument('--callable', required=True)
    p.add_argument('--args', default='[]', help='JSON list')
    p.add_argument('--kwargs', default='{}', help='JSON object')
    p.add_argument('--class-args', default=None, help='JSON list')
    p.add_argument('--class-kwargs', default=None, help='JSON object')
    p.add_argument('--count', type=int, default=1)
    p.add_argument('--reply-requested', action='store_true')
    p.add_argument('--guarantee', action='store_true')
    p.add_argument('--retry-count', type=int, default=0)
    p.add_argument('--timeout', type=int, default=0,
                   help='per-job timeout header in seconds (0 = none)')
    p.add_argument('--connect-timeout', type=float, default=5.0,
                   help='seconds to wait for the handshake (0 = skip check)')
    p.add_argument('--linger', type=float, default=10.0,
                   help='seconds to wait for queued messages to leave')
    p.add_argument('--expect-replies', type=int, default=0,
                   help='wait for this many REPLY messages (receipts or '
                        'results) before closing')
    p.add_argument('--wait', type=float, default=10.0,
                   help='seconds to wait for --expect-replies')
    p.add_argument('--header', action='append', default=[],
                   help='an extra REQUEST header (e.g. unique:KEY): the '
                        'request is then sent with EventMQ\'s own '
                        'send_emqp_message, as send_request does')
    p.add_argument('--print-msgids', action='store_true',
                   help='print each sent msgid on stderr')
    a = p.parse_args()

    body = {'path': a.path, 'callable': a.callable,
            'args': json.loads(a.args), 'kwargs': json.loads(a.kwargs)}
    if a.class_args is not None:
        body['class_args'] = json.loads(a.class_args)
    if a.class_kwargs is not None:
        body['class_kwargs'] = json.loads(a.class_kwargs)
    message = ['run', body]

    ctx = zmq.Context.instance()
    s = Sender()           # eventmq's DEALER; also reads EVENTMQ_* settings
    s.zsocket.setsockopt(zmq.SNDHWM, 0)   # never block on the HWM
    if a.connect_timeout <= 0:
        s.connect(a.addr)
    elif not wait_connected(s.zsocket, a.connect_timeout,
                            lambda: s.connect(a.addr)):
        print('eventmq_send: no connection to %s within %.1fs'
              % (a.addr, a.connect_timeout), file=sys.stderr)
        s.zsocket.close(linger=0)
        ctx.term()
        return 2

    t0 = time.monotonic()
    first = last = None
    for _ in range(a.count):
        if a.header:
            # send_request's own body, with the extra headers.
            headers = (['reply-requested'] if a.reply_requested else []) + \
                (['guarantee'] if a.guarantee else []) + a.header
            last = send_emqp_message(s, 'REQUEST', (a.queue, ','.join(headers),
                                                    serialize(message)))
        else:
            last = send_request(s, message,
                                reply_requested=a.reply_requested,
                                guarantee=a.guarantee,
                                retry_count=a.retry_count,
                                timeout=a.timeout, queue=a.queue)
        if first is None:
            first = last
        if a.print_msgids:
            print(last, file=sys.stderr)
    t_sent = time.monotonic()

    receipts = results = other = 0
    if a.expect_replies > 0:
        deadline = time.monotonic() + a.wait
        while receipts + results < a.expect_replies:
            left = deadline - time.monotonic()
            if left <= 0 or not s.zsocket.poll(int(left * 1000)):
                break
            frames = s.recv_multipart()   # ['', 'eMQP/1.0', CMD, msgid, ...]
            if len(frames) > 2 and frames[2] == 'REPLY':
                if len(frames) == 5:
                    receipts += 1
                else:
                    results += 1
            else:
                other += 1

    # Flush: close with a linger, then term() blocks until the queue is
    # empty or the linger expired.
    linger_ms = int(a.linger * 1000)
    s.zsocket.close(linger=linger_ms)
    t_close = time.monotonic()
    ctx.term()
    t_done = time.monotonic()
    flushed = (t_done - t_close) * 1000 < linger_ms - 50

    summary = {'sent': a.count, 'addr': a.addr, 'queue': a.queue,
               'first_msgid': first, 'last_msgid': last,
               'send_secs': round(t_sent - t0, 4),
               'total_secs': round(t_done - t0, 4),
               'flushed': flushed}
    if a.expect_replies > 0:
        summary.update(receipts=receipts, results=results,
                       other_messages=other)
    print(json.dumps(summary))
    sys.stdout.flush()

    if not flushed:
        print('eventmq_send: linger of %.1fs expired; some messages may not '
              'have left' % a.linger, file=sys.stderr)
        return 3
    if a.expect_replies > 0 and receipts + results < a.expect_replies:
        print('eventmq_send: got %d of %d expected replies'
              % (receipts + results, a.expect_replies), file=sys.stderr)
        return 4
    return 0


if __name__ == '__main__':
    sys.exit(main())
