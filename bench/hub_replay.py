#!/usr/bin/env python3
"""The hub's replay cost: publishes N updates (1 % to one topic, the rest spread over 50 others)
to a fresh `tidings-hub --store memory`, then resumes one subscriber from `earliest` with a
narrow selector, a template matching 99 %, and `*`, and prints the server CPU each took.

    cargo build --release -p tidings-hub && python3 bench/hub_replay.py [N=100000]
"""
import base64, hashlib, hmac, http.client, json, os, socket, subprocess, sys, time, urllib.parse
KEY = "bench-publisher-key-of-at-least-32-bytes"
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(json.dumps({"mercure": {"publish": ["*"]}}).encode())
TOKEN = head + "." + b64(hmac.new(KEY.encode(), head.encode(), hashlib.sha256).digest())
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
s=socket.socket(); s.bind(("127.0.0.1",0)); port=s.getsockname()[1]; s.close()
env=dict(os.environ, MERCURE_PUBLISHER_JWT_KEY=KEY)
p=subprocess.Popen([os.path.join(ROOT, "target/release/tidings-hub"),"--addr",f"127.0.0.1:{port}","--store","memory","--anonymous","--retain","200000","--no-page"],env=env,stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
for _ in range(100):
    try: socket.create_connection(("127.0.0.1",port)).close(); break
    except OSError: time.sleep(0.1)
def cpu():
    f=open(f"/proc/{p.pid}/stat").read().rsplit(")",1)[1].split()
    return (int(f[11])+int(f[12]))/os.sysconf("SC_CLK_TCK")
c=http.client.HTTPConnection("127.0.0.1",port)
N=int(sys.argv[1]) if len(sys.argv)>1 else 100000
data="x"*200
for i in range(N):
    topic="https://example.com/narrow" if i%100==0 else f"https://example.com/wide/{i%50}"
    body=urllib.parse.urlencode([("topic",topic),("data",f"{i} {data}")])
    c.request("POST","/.well-known/mercure",body,{"Authorization":"Bearer "+TOKEN,"Content-Type":"application/x-www-form-urlencoded"})
    r=c.getresponse(); r.read()
    assert r.status==200
def resume(selector, expect):
    c=http.client.HTTPConnection("127.0.0.1",port)
    c0,t0=cpu(),time.time()
    c.request("GET","/.well-known/mercure?"+urllib.parse.urlencode([("topic",selector),("lastEventID","earliest")]))
    r=c.getresponse(); got=0; tail=b""
    while got<expect:
        chunk=r.read1(65536)
        # Every event's data line follows a line end; a match may span two chunks.
        got+=(tail+chunk).count(b"\ndata: ")
        tail=chunk[-6:]
    dt=time.time()-t0; dc=cpu()-c0
    print(f"{selector}: {got} delivered of {N} read, {dt:.2f} s, server CPU {dc:.2f} s, {N/max(dc,0.01):.0f} updates read per CPU-s, {got/max(dc,0.01):.0f} delivered per CPU-s")
    c.close()
resume("https://example.com/narrow", N//100)
resume("https://example.com/wide/{n}", N-N//100)
resume("*", N)
p.kill()
