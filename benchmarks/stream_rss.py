"""Gateway memory around one big SSE file stream (real processes, offline model).

    uv run --frozen python benchmarks/stream_rss.py [MiB=100]          # a reader at full speed
    SLOW=5 uv run --frozen python benchmarks/stream_rss.py 100         # a slow reader (4 KiB receive
                                                                       # buffer, 10 ms per read)

Prints the gateway's RSS before, at peak and 3 s after. The relay is pull-based (the SSE generator
reads the next gRPC message only after uvicorn has sent the previous event, and uvicorn waits for
the socket to drain), so a slow reader holds the sandbox back instead of filling the gateway.
Measured 2026-12-03: 100 MiB file, fast reader: 79 -> peak 85 -> 81 MiB after (0.7 s);
slow reader for 90 s: 79 -> peak 86 -> 82 MiB (3 MiB read), i.e. no buffering of the file.
"""
import os, socket, sys, tempfile, time, shutil, threading
from pathlib import Path
import httpx
from fsagent.cli.localstack import LocalStack, Ports

def rss(pid):
    vals = {}
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(("VmRSS", "VmHWM")):
            k, v = line.split(":"); vals[k] = int(v.split()[0]) // 1024
    return vals

tmp = Path(tempfile.mkdtemp())
data = tmp / "data"; data.mkdir()
line = "x" * 199 + "\n"
size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 200
with open(data / "big.txt", "w") as f:
    for _ in range(size_mb * 1024 * 1024 // 200 // 1000):
        f.write(line * 1000)
env = {"FSAGENT_LLM_PROVIDER": "offline", "FSAGENT_API_KEYS": "", "FSAGENT_MAX_FILE_SIZE": str(2**31)}
env.update(dict(a.split("=",1) for a in sys.argv[2:]))
stack = LocalStack(data_root=data, cache_dir=tmp / "cache", ports=Ports.free(), extra_env=env, log_dir=tmp / "logs")
stack.start(timeout=60)
try:
    pid = stack.processes["gateway"].pid
    with httpx.Client(base_url=stack.base_url) as c:
        for _ in range(20): c.get("/api/documents")
    base = rss(pid); print("baseline", base)
    s = socket.create_connection(("127.0.0.1", stack.ports.gateway))
    if os.environ.get("SLOW", "0") != "0": s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(f"GET /api/stream/file/big.txt?chunk_lines=1000 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    got, t0, peak = 0, time.time(), 0
    slow_until = t0 + float(os.environ.get("SLOW", "10"))
    s.settimeout(10)
    tail = b""
    while True:
        try:
            b = s.recv(65536 if time.time() > slow_until else 4096)
        except socket.timeout:
            print("recv timeout"); break
        if not b: break
        tail = (tail + b)[-2000:]
        got += len(b)
        if b.endswith(b"event: done\ndata: ") or b"event: done" in b[-300:]:
            pass
        if time.time() < slow_until: time.sleep(0.01)
        r = rss(pid)["VmRSS"]; peak = max(peak, r)
        if b"event: done" in tail: break
        if time.time() - t0 > 90: print("cap"); break
    print(f"read {got/2**20:.0f} MiB in {time.time()-t0:.1f}s; peak RSS {peak} MiB")
    s.close(); time.sleep(3)
    print("after", rss(pid))
finally:
    stack.stop(); shutil.rmtree(tmp)
