# Scenario 5 alone, for comparing two builds back to back:
#   python3 bench/s5_compare.py <dir with emq-router and emq-bench>
# Prints router RSS growth per buffered 100-byte job (N=1,000,000).
import os, shutil, socket, subprocess, sys, time, tempfile
def fp():
    s=socket.socket(); s.bind(("127.0.0.1",0)); p=s.getsockname()[1]; s.close(); return p
def rss(pid):
    for l in open("/proc/%d/status"%pid):
        if l.startswith("VmRSS"): return int(l.split()[1])
rel=os.path.abspath(sys.argv[1]); n=1000000
f,b,a=["tcp://127.0.0.1:%d"%fp() for _ in range(3)]
d=tempfile.mkdtemp()
env=dict(os.environ, **dict(RUST_LOG="error", EMQ_HTTP_ADDR="", EMQ_HWM=str(2*n), EMQ_DATA_DIR=d))
r=subprocess.Popen([rel+"/emq-router","--frontend-addr",f,"--backend-addr",b,"--administrative-addr",a],env=env,cwd=d)
try:
    time.sleep(1.5); before=rss(r.pid)
    out=subprocess.run([rel+"/emq-bench","fill","--frontend",f,"--n",str(n),"--size","100"],capture_output=True,text=True,timeout=600)
    time.sleep(0.5); after=rss(r.pid)
    print(sys.argv[1], out.stdout.strip()[-120:], "bytes/job=%.0f"%((after-before)*1024/n))
finally:
    r.kill(); r.wait()
    shutil.rmtree(d, ignore_errors=True)
