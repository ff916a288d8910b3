#!/usr/bin/env python3
"""What a Zed user does through the code actions menu, replayed by a plain LSP client against the real binary.

Zed announces no sandlink capability, so this client does not either. Every action title that zed-extension/README.md
shows in backticks must be one the server really offers, and connect, run a task, cancel, sync and disconnect must
work through workspace/executeCommand alone, with run output arriving as window/logMessage. Standard library only.
"""

import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = REPO / "zed-extension" / "README.md"


class PlainClient:
    """An LSP client over the binary's stdio with Content-Length framing, as Zed speaks it."""

    def __init__(self, binary, state_dir):
        environment = dict(os.environ, SANDLINK_STATE_DIR=state_dir)
        self.process = subprocess.Popen(
            [binary, "lsp"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=environment
        )
        self.next_id = 0
        self.responses = {}
        self.notifications = queue.Queue()
        self.server_requests = []
        self.lock = threading.Condition()
        threading.Thread(target=self._read_forever, daemon=True).start()

    def _send(self, message):
        body = json.dumps(message).encode()
        self.process.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.process.stdin.flush()

    def _read_message(self):
        headers = {}
        while True:
            line = self.process.stdout.readline()
            if not line:
                return None
            line = line.decode().strip()
            if not line:
                break
            name, value = line.split(":", 1)
            headers[name.lower()] = value.strip()
        return json.loads(self.process.stdout.read(int(headers["content-length"])))

    def _read_forever(self):
        while True:
            message = self._read_message()
            if message is None:
                return
            if "method" in message and "id" in message:
                # Server-to-client requests (progress creation, showDocument): answered as Zed would, with success.
                self.server_requests.append(message)
                result = {"success": False} if message["method"] == "window/showDocument" else None
                self._send({"jsonrpc": "2.0", "id": message["id"], "result": result})
            elif "method" in message:
                self.notifications.put(message)
            else:
                with self.lock:
                    self.responses[message["id"]] = message
                    self.lock.notify_all()

    def request(self, method, params, timeout=30):
        self.next_id += 1
        request_id = self.next_id
        self._send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        deadline = time.time() + timeout
        with self.lock:
            while request_id not in self.responses:
                remaining = deadline - time.time()
                if remaining <= 0:
                    raise AssertionError(f"no answer to {method} within {timeout} s")
                self.lock.wait(remaining)
            response = self.responses.pop(request_id)
        if "error" in response:
            raise AssertionError(f"{method} failed: {response['error']}")
        return response.get("result")

    def notify(self, method, params):
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    def wait_for_log(self, pattern, timeout=20):
        """Waits for a window/logMessage or window/showMessage whose text matches; returns every message seen."""
        seen = []
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                message = self.notifications.get(timeout=max(0.05, deadline - time.time()))
            except queue.Empty:
                break
            seen.append(message)
            text = message.get("params", {}).get("message", "")
            if message["method"] in ("window/logMessage", "window/showMessage") and re.search(pattern, text):
                return seen
        raise AssertionError(f"no message matching {pattern!r}; saw {[m['method'] for m in seen]}: {seen[-5:]}")

    def close(self):
        try:
            self.request("shutdown", None, timeout=10)
            self.notify("exit", None)
            self.process.wait(timeout=10)
        except Exception:
            self.process.kill()


def readme_titles():
    """The action titles the README shows: backticked text starting with `sandlink: `."""
    return sorted(set(re.findall(r"`(sandlink: [^`]+)`", README.read_text())))


def main():
    binary = os.environ.get("SANDLINK_BIN", str(REPO / "target" / "debug" / "sandlink"))
    passed, failed = 0, 0
    with tempfile.TemporaryDirectory() as scratch:
        workspace = Path(scratch) / "workspace"
        workspace.mkdir()
        (workspace / "main.py").write_text("print('hello')\n")
        (workspace / ".sandlink.toml").write_text('[tasks]\ntest = "echo zed-task-output"\nslow = "sleep 60"\n')
        document = {"uri": workspace.joinpath("main.py").as_uri()}
        client = PlainClient(binary, str(Path(scratch) / "state"))
        offered_titles = set()

        def code_actions():
            actions = client.request(
                "textDocument/codeAction",
                {"textDocument": document, "range": {"start": {"line": 0, "character": 0},
                                                     "end": {"line": 0, "character": 0}},
                 "context": {"diagnostics": []}},
            ) or []
            offered_titles.update(action["title"] for action in actions)
            return {action["title"]: action for action in actions}

        def execute(action):
            command = action["command"]
            return client.request("workspace/executeCommand",
                                  {"command": command["command"], "arguments": command.get("arguments", [])})

        def check(name, body):
            nonlocal passed, failed
            try:
                body()
                passed += 1
                print(f"ok   {name}", flush=True)
            except Exception as error:  # noqa: BLE001 - every failure is reported, then the next check runs
                failed += 1
                print(f"FAIL {name}\n     {error}", flush=True)

        try:
            client.request("initialize", {
                "processId": os.getpid(), "rootUri": workspace.as_uri(),
                "workspaceFolders": [{"uri": workspace.as_uri(), "name": "workspace"}],
                "capabilities": {"window": {"workDoneProgress": True, "showDocument": {"support": True}}},
                "initializationOptions": {"client": "zed"},
            })
            client.notify("initialized", {})
            # Workspace tasks run only in a trusted workspace; Zed users confirm it with `sandlink trust` (or this
            # request), as the refusal message says.
            client.request("sandlink/trustWorkspace", {"workspaceFolder": workspace.as_uri(), "trust": True})
            state = {}

            def connect_is_offered_while_disconnected():
                actions = code_actions()
                assert "sandlink: Connect (local)" in actions, f"offered: {sorted(actions)}"
                state["connect"] = actions["sandlink: Connect (local)"]

            def connect_through_execute_command():
                session = execute(state["connect"])
                assert session and session.get("sessionId"), f"connect answered {session}"
                client.wait_for_log(r"is active", timeout=20)

            def session_actions_are_offered_while_connected():
                actions = code_actions()
                for title in ("sandlink: Run task test (echo zed-task-output)", "sandlink: Sync now",
                              "sandlink: Sync both ways", "sandlink: Disconnect (local)"):
                    assert title in actions, f"{title!r} not offered: {sorted(actions)}"
                state["actions"] = actions

            def run_task_output_arrives_as_log_messages():
                execute(state["actions"]["sandlink: Run task test (echo zed-task-output)"])
                client.wait_for_log(r"zed-task-output")

            def cancel_is_offered_for_a_running_task_and_stops_it():
                execute(code_actions()["sandlink: Run task slow (sleep 60)"])
                cancel_title = "sandlink: Cancel sleep 60"
                deadline = time.time() + 10
                while cancel_title not in (actions := code_actions()) and time.time() < deadline:
                    time.sleep(0.2)
                assert cancel_title in actions, f"offered: {sorted(actions)}"
                started = time.time()
                execute(actions[cancel_title])
                deadline = time.time() + 10
                while cancel_title in code_actions() and time.time() < deadline:
                    time.sleep(0.2)
                assert cancel_title not in code_actions(), "the run is still offered for cancelling"
                assert time.time() - started < 10

            def sync_now_answers_with_counts():
                result = execute(state["actions"]["sandlink: Sync now"])
                assert isinstance(result, dict) and "uploaded" in result, f"sync answered {result}"

            def readme_titles_are_all_offered_by_the_server():
                # Titles with a variable part (driver, task, command, port) are compared by their fixed prefix.
                prefixes = {title.split("(")[0].rstrip() if "(" in title else title for title in offered_titles}
                generic = re.compile(r"^sandlink: (Connect|Disconnect) \(|^sandlink: Run task |^sandlink: Cancel "
                                     r"|^sandlink: Open preview of port |^sandlink: Extend by |^sandlink: not connected"
                                     r"|^sandlink: active on ")
                unknown = [title for title in readme_titles()
                           if title not in offered_titles and title not in prefixes and not generic.match(title)]
                assert not unknown, f"the README names actions the server does not offer: {unknown}"

            def disconnect_through_execute_command():
                execute(state["actions"]["sandlink: Disconnect (local)"])
                actions = code_actions()
                assert "sandlink: Connect (local)" in actions, f"after disconnecting, offered: {sorted(actions)}"

            for check_name, body in [
                ("connect_should_be_offered_while_disconnected", connect_is_offered_while_disconnected),
                ("connect_should_work_through_execute_command", connect_through_execute_command),
                ("session_actions_should_be_offered_while_connected", session_actions_are_offered_while_connected),
                ("run_task_output_should_arrive_as_log_messages", run_task_output_arrives_as_log_messages),
                ("cancel_should_be_offered_for_a_running_task_and_stop_it",
                 cancel_is_offered_for_a_running_task_and_stops_it),
                ("sync_now_should_answer_with_counts", sync_now_answers_with_counts),
                ("readme_titles_should_all_be_offered_by_the_server", readme_titles_are_all_offered_by_the_server),
                ("disconnect_should_work_through_execute_command", disconnect_through_execute_command),
            ]:
                check(check_name, body)
        finally:
            client.close()
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
