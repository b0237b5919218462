"""The review's memory attack: 40 x 20 MB REQUESTs at an emq-router.

    target/venv/bin/python bench/attack.py target/release/emq-router

Prints the router's RSS before and after (peak over 5 s). Starts its own
router on free ports with a fresh data dir and kills it (by pid) at the end.
"""
import os, subprocess, sys, time, socket, zmq, tempfile
def port():
    s=socket.socket(); s.bind(("127.0.0.1",0)); p=s.getsockname()[1]; s.close(); return p
def rss(pid):
    for l in open("/proc/%d/status"%pid):
        if l.startswith("VmRSS:"): return int(l.split()[1])
binary=sys.argv[1]
fe,be,ad="tcp://127.0.0.1:%d"%port(),"tcp://127.0.0.1:%d"%port(),"tcp://127.0.0.1:%d"%port()
env=dict(os.environ, RUST_LOG="error", EMQ_HTTP_ADDR="", EMQ_DATA_DIR=tempfile.mkdtemp(), EMQ_HWM="100000")
p=subprocess.Popen([binary,"--frontend-addr",fe,"--backend-addr",be,"--administrative-addr",ad],env=env,cwd="/tmp")
time.sleep(1.5)
before=rss(p.pid)
ctx=zmq.Context()
big="x"*(20<<20)
socks=[]
for i in range(40):
    s=ctx.socket(zmq.DEALER); s.setsockopt(zmq.LINGER,0); s.connect(fe)
    s.send_multipart([b"",b"eMQP/1.0",b"REQUEST",("big-%d"%i).encode(),b"default",b"",big.encode()])
    socks.append(s)
time.sleep(5)
peak=0
for _ in range(10):
    peak=max(peak,rss(p.pid)); time.sleep(0.5)
print({"binary":binary,"rss_before_mb":before/1024,"rss_after_40x20MB_mb":peak/1024})
p.kill(); p.wait()
