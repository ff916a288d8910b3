"""A small raw LSP client for benchmarks: frames JSON-RPC by hand so its own overhead stays visible and small."""

import json
import os
import subprocess
import threading
import time


class LspClient:
    """Starts `sandlink lsp` and keeps every notification with its arrival time."""

    def __init__(self, binary, state_dir, notifications=True, store_output=True):
        self.started_at = time.perf_counter()
        env = dict(os.environ, SANDLINK_STATE_DIR=state_dir)
        self.process = subprocess.Popen(
            [binary, "lsp"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
        )
        self.lock = threading.Condition()
        self.responses = {}
        self.notifications = []
        self.store_output = store_output
        self.output_bytes = {}
        self.next_id = 1
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        capabilities = {"experimental": {"sandlink": {"notifications": notifications}}}
        self.initialize_result = self.request("initialize", {"processId": os.getpid(), "rootUri": None, "capabilities": capabilities})
        self.initialized_at = time.perf_counter()
        self.notify("initialized", {})

    def _read(self):
        stream = self.process.stdout
        while True:
            length = None
            while True:
                line = stream.readline()
                if not line:
                    with self.lock:
                        self.lock.notify_all()
                    return
                line = line.strip()
                if not line:
                    break
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = stream.read(length)
            arrived = time.perf_counter()
            message = json.loads(body)
            with self.lock:
                if "method" in message and "id" in message:
                    self._send({"jsonrpc": "2.0", "id": message["id"], "result": None})
                elif "method" in message:
                    if message["method"] == "sandlink/output" and not self.store_output:
                        run_id = message["params"]["runId"]
                        self.output_bytes[run_id] = self.output_bytes.get(run_id, 0) + len(message["params"]["text"])
                    else:
                        self.notifications.append((arrived, message))
                else:
                    self.responses[message["id"]] = message
                self.lock.notify_all()

    def _send(self, message):
        body = json.dumps(message).encode()
        self.process.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.process.stdin.flush()

    def notify(self, method, params):
        with self.lock:
            self._send({"jsonrpc": "2.0", "method": method, "params": params})

    def request(self, method, params, timeout=600):
        with self.lock:
            request_id = self.next_id
            self.next_id += 1
            self._send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
            deadline = time.monotonic() + timeout
            while request_id not in self.responses:
                if not self.lock.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(method)
            response = self.responses.pop(request_id)
        if "error" in response:
            raise RuntimeError(f"{method}: {response['error']}")
        return response.get("result")

    def wait_notification(self, method, matches, timeout=600):
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                for index, (arrived, message) in enumerate(self.notifications):
                    if message["method"] == method and matches(message["params"]):
                        del self.notifications[index]
                        return arrived, message["params"]
                if not self.lock.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(method)

    def drop_notifications(self):
        with self.lock:
            self.notifications.clear()

    def memory_kib(self, field):
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        return None

    def close(self):
        try:
            self.request("shutdown", None, timeout=30)
            self.notify("exit", None)
            self.process.wait(timeout=10)
        except Exception:
            self.process.kill()
