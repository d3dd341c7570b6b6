"""The floor for ``pyra ask``: the least a Python client can do, with the stdlib only.

``python tests/bench/min_client.py SOCKET [PROMPT]`` connects to the daemon's Unix socket,
pipelines ``hello`` and ``ask`` in one write, prints the streamed text and exits at the
response. No endpoint lookup, no error classes, no rendering: whatever ``pyra ask`` costs above
this is the price of the client library and CLI.
"""

import json
import socket
import sys


def main() -> int:
    path = sys.argv[1]
    prompt = sys.argv[2] if len(sys.argv) > 2 else "hi"
    hello = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "hello",
        "params": {"protocol": 1, "client": "cli"},
    }
    ask = {"jsonrpc": "2.0", "id": 2, "method": "ask", "params": {"prompt": prompt}}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.sendall((json.dumps(hello) + "\n" + json.dumps(ask) + "\n").encode())
        buffer = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                print("the daemon closed the connection", file=sys.stderr)
                return 1
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                message = json.loads(line)
                if message.get("method") == "stream":
                    sys.stdout.write(message["params"].get("text", ""))
                elif message.get("id") == 2:
                    if "error" in message:
                        print(message["error"]["message"], file=sys.stderr)
                        return 1
                    sys.stdout.write("\n")
                    return 0


if __name__ == "__main__":
    sys.exit(main())
