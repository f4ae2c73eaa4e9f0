# A tiny HTTP server for the shop scenario: answers every method on every
# port given on the command line with "<name> <method> <path>", so a test
# can tell who answered what.
import http.server
import socketserver
import sys
import threading

NAME = sys.argv[1]
PORTS = [int(p) for p in sys.argv[2:]]


class Handler(http.server.BaseHTTPRequestHandler):
    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = f"{NAME} {self.command} {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


servers = [Server(("", p), Handler) for p in PORTS]
for s in servers[1:]:
    threading.Thread(target=s.serve_forever, daemon=True).start()
print(f"{NAME} listening on {PORTS}", flush=True)
servers[0].serve_forever()
