# client.py METHOD URL: sends one request and prints "HTTP <status> <body>"
# or the error the process got, e.g. "failed: [Errno 1] Operation not
# permitted" when sidewall denies the connect. Exit 0 on any HTTP answer.
import sys
import urllib.error
import urllib.request

method, url = sys.argv[1], sys.argv[2]
req = urllib.request.Request(url, method=method, data=b"hello" if method in ("POST", "PUT") else None)
try:
    with urllib.request.urlopen(req, timeout=5) as resp:
        print(f"HTTP {resp.status} {resp.read().decode().strip()}")
except urllib.error.HTTPError as e:
    print(f"HTTP {e.code} {e.read().decode().strip()}")
except Exception as e:  # noqa: BLE001 - the error is the result
    reason = getattr(e, "reason", e)
    print(f"failed: {reason}")
    sys.exit(1)
