"""A command run as a person runs it in a terminal: typed into, its lines read as they come.
Shared by the smoke test (the README's commands) and the conformance suite (the `chat` CLI
against agents)."""

import os
import queue
import signal
import subprocess
import threading
import time


class Terminal:
    def __init__(self, command, cwd=None, env=None):
        self.process = subprocess.Popen(
            command if isinstance(command, list) else ["bash", "-c", command],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.output = []
        self.lines = queue.Queue()
        threading.Thread(
            target=lambda: [self.lines.put(l) for l in iter(self.process.stdout.readline, "")],
            daemon=True,
        ).start()

    def read_until(self, predicate, seconds):
        """Reads lines until one satisfies `predicate`; False after `seconds` or an exit."""
        deadline = time.time() + seconds
        while time.time() < deadline:
            try:
                self.output.append(self.lines.get(timeout=0.5))
            except queue.Empty:
                if self.process.poll() is not None:
                    return False
                continue
            if predicate(self.output[-1]):
                return True
        return False

    def type(self, line):
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def printed(self):
        return "".join(self.output)

    def close(self):
        """Closes its input (ctrl-d) and waits for it; killed if it does not exit."""
        try:
            self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
