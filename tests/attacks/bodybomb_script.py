"""Unauthenticated POSTs with large bodies: the admin server buffers each (<= 64 MiB) before it
authenticates. Measures the server process's peak RSS while N such requests are in flight."""
import resource, socket, threading, time
from spendgate.web.server import AdminServer
from spendgate.web.app import WebApp

srv = AdminServer({})
srv.app = WebApp(routes={}, post_routes={}, tokens=lambda: ["tok"])
srv.start()
host, port = srv.httpd.server_address[:2]
N, SIZE = 4, 60 * 1024 * 1024
def rss(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
print("peak RSS before MiB:", rss())
chunk = b"a" * (1 << 20)
def send():
    s = socket.create_connection((host, port))
    s.sendall(f"POST /api/ingest HTTP/1.1\r\nHost: x\r\nContent-Length: {SIZE}\r\n\r\n".encode())
    for _ in range(SIZE >> 20): s.sendall(chunk)
    print("answer:", s.recv(200).split(b"\r\n")[0], s.recv(300)[-80:])
    s.close()
ts = [threading.Thread(target=send) for _ in range(N)]
[t.start() for t in ts]; [t.join() for t in ts]
print(f"peak RSS after {N} unauthenticated {SIZE>>20} MiB POSTs, MiB:", rss())
srv.stop()
