"""The newcomer's path, from the outside: the README's start command, verbatim.

What a person does after cloning, checked by tools this project did not write:

1. runs the start command exactly as README.md writes it, in the background, and waits for the
   banner; every endpoint is read from what the stack printed;
2. runs the banner's token command exactly as printed, connects with Python `websockets`,
   answers the banner's heartbeat example, opens a chat with the demo agent without keys
   (`demo-plain`, for tools that cannot encrypt) over the HTTP API, sends a message and gets
   `message_ack` and the agent's answer;
3. runs the README's `chat` command with the (encrypted) demo agent, types a line and sees the
   agent's answer, opened on this device and never marked `[not encrypted]`;
4. opens an end-to-end encrypted 1:1 between two brand-new users with the README's `chat`
   commands, driven through stdin: the second user's chat is open (its device has published
   its keys: nobody can encrypt for a device that does not exist yet), the first writes and
   exits, the second reads the plaintext;
5. opens the banner's web client URL: the page, its config.json (the banner's own endpoints)
   and its crypto module are served; then a newcomer in headless Chromium signs up with the code
   the page shows, starts a chat with the demo agent and reads its encrypted answer within a
   minute (tests/browser/newcomer.mjs);
6. stops the stack with SIGINT (ctrl-c) and checks that it exits within seconds and leaves no
   redis-server or MongoDB-wire server behind.

A README example that changes must change this test with it: the commands are read from
README.md and from the banner, never written here.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid

from websockets.sync.client import connect

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "contract"))
from terminal import Terminal  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOG = os.path.join(ROOT, "target", "smoke-stack.log")
# The first build of the stack can take a while on a small machine.
START_TIMEOUT = float(os.environ.get("SMOKE_START_TIMEOUT", "1500"))
STOP_TIMEOUT = 5.0


def fail(message):
    print(f"smoke: FAILED: {message}", file=sys.stderr)
    if os.path.exists(LOG):
        with open(LOG, encoding="utf-8", errors="replace") as f:
            tail = f.read()[-4000:]
        print(f"--- last lines of {LOG} ---\n{tail}", file=sys.stderr)
    sys.exit(1)


def step(message):
    print(f"smoke: {message}", flush=True)


def readme_code_lines():
    """Every line of README.md's fenced shell blocks, without prompts."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    lines = []
    for block in re.findall(r"```(?:sh|console|bash)\n(.*?)```", text, re.S):
        for line in block.splitlines():
            lines.append(line[2:] if line.startswith("$ ") else line)
    return lines


def readme_start_command():
    """The README's start command: the first code line that runs scripts/dev."""
    for line in readme_code_lines():
        if line.strip().startswith("./scripts/dev"):
            return line.strip()
    fail("README.md has no code line starting with ./scripts/dev")


def readme_chat_commands():
    """The README's 1:1 example: the chat commands with --with, in README order."""
    commands = []
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    for match in re.finditer(r"`(cargo run[^`]*--bin chat[^`]*--with[^`]*)`", text):
        commands.append(match.group(1))
    for line in readme_code_lines():
        if "--bin chat" in line and "--with" in line:
            commands.append(line.strip())
    seen = []
    for c in commands:
        if c not in seen:
            seen.append(c)
    if len(seen) < 2:
        fail(f"README.md should show the two sides of a 1:1 chat; found {seen}")
    return seen[:2]


def process_group_members(pgid):
    members = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            members.append((int(pid), cmdline.strip()))
    return members


def start_stack(command):
    step(f"running the README's start command: {command}")
    os.makedirs(os.path.dirname(LOG), exist_ok=True)
    log = open(LOG, "w")
    # Its own process group, like a terminal's foreground job, so ctrl-c can be sent to all of it.
    stack = subprocess.Popen(
        ["bash", "-c", command],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + START_TIMEOUT
    while time.time() < deadline:
        if stack.poll() is not None:
            fail(f"the start command exited with status {stack.returncode} before the banner")
        with open(LOG, encoding="utf-8", errors="replace") as f:
            text = f.read()
        if "local stack is up" in text and "stop: ctrl-c" in text:
            return stack, text[text.index("local stack is up"):]
        time.sleep(1)
    fail(f"no banner within {START_TIMEOUT:.0f} s")


def banner_value(banner, label):
    match = re.search(rf"^\s+{re.escape(label)}\s+(\S+)", banner, re.M)
    if not match:
        fail(f"the banner has no {label!r} line")
    return match.group(1)


def http_json(method, url, token=None, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def receive_until(ws, predicate, what, timeout=20.0):
    deadline = time.time() + timeout
    seen = []
    while time.time() < deadline:
        try:
            frame = json.loads(ws.recv(timeout=max(0.1, deadline - time.time())))
        except TimeoutError:
            break
        seen.append(frame.get("type"))
        if predicate(frame):
            return frame
    fail(f"no {what} within {timeout:.0f} s (frames seen: {seen})")


def talk_to_the_demo_agent(banner):
    token_line = next(
        (l.strip() for l in banner.splitlines() if l.strip().startswith("TOKEN=$(")), None
    )
    if not token_line:
        fail("the banner shows no token command")
    step(f"running the banner's token command: {token_line}")
    out = subprocess.run(
        ["bash", "-c", f'{token_line}\nprintf %s "$TOKEN"'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    token = out.stdout.strip()
    if out.returncode != 0 or token.count(".") != 2:
        fail(f"the token command failed ({out.returncode}): {out.stderr.strip()}")
    ws_url = banner_value(banner, "WebSocket API").replace("JWT", token)
    api = banner_value(banner, "HTTP API").split("/v1/")[0]

    step(f"connecting with Python websockets to {ws_url.split('?')[0]}")
    with connect(ws_url, open_timeout=10) as ws:
        # The banner's example frame.
        example = re.search(r"then send: (\{.*\})", banner)
        if not example:
            fail("the banner shows no frame to send")
        ws.send(example.group(1))
        receive_until(ws, lambda f: f.get("type") == "heartbeat_ack", "heartbeat_ack")

        conversation = http_json("POST", f"{api}/v1/conversations", token, {"agent_id": "demo-plain"})
        conversation_id = conversation["conversation_id"]
        text = f"hello from the smoke test {uuid.uuid4().hex[:8]}"
        ws.send(
            json.dumps(
                {
                    "type": "message",
                    "client_message_id": "smoke-1",
                    "idempotency_key": str(uuid.uuid4()),
                    "payload": {
                        "conversation_id": conversation_id,
                        "content": text,
                        "type": "text",
                        "timestamp": int(time.time() * 1000),
                    },
                }
            )
        )
        ack = receive_until(ws, lambda f: f.get("type") == "message_ack", "message_ack")
        if ack["payload"]["status"] != "sent" or ack.get("client_message_id") != "smoke-1":
            fail(f"unexpected ack {ack}")
        answer = receive_until(
            ws,
            lambda f: f.get("type") == "message"
            and f["payload"].get("sender_id") == "demo-plain"
            and text in f["payload"].get("content", ""),
            "answer from the demo agent",
        )
        step(f"demo agent answered #{answer['payload']['sequence_number']}: "
             f"{answer['payload']['content']!r}")


def readme_agent_chat_command():
    """The README's chat with the demo agent: the first chat command with --agent."""
    for line in readme_code_lines():
        if "--bin chat" in line and "--agent" in line:
            return line.strip()
    fail("README.md has no chat command with --agent")


def chat_with_the_demo_agent():
    suffix = uuid.uuid4().hex[:8]
    command = re.sub(r"\balice\b", f"alice-{suffix}", readme_agent_chat_command())
    text = f"hello there, {suffix}"
    step(f"the README's chat with the demo agent: {command}")
    terminal = Terminal(command, cwd=ROOT)
    if not terminal.read_until(lambda line: "end-to-end encrypted" in line, 600):
        terminal.close()
        fail(f"the agent chat never said how it is protected:\n{terminal.printed()}")
    if "not end-to-end encrypted" in terminal.printed():
        terminal.close()
        fail(f"the chat with the demo agent is not encrypted:\n{terminal.printed()}")
    terminal.type(text)
    # The stored answer: "✓ #N from demo" after the streamed line, or the whole message.
    answered = terminal.read_until(
        lambda line: ("✓ #" in line and "from demo" in line) or " demo: Demo agent here" in line,
        120,
    )
    terminal.close()
    printed = terminal.printed()
    if not answered or f"You said: {text}" not in printed:
        fail(f"the demo agent's answer did not show; the chat printed:\n{printed}")
    if "[not encrypted]" in printed or "cannot be decrypted" in printed:
        fail(f"the demo agent's answer was not sealed for this device:\n{printed}")
    step("the demo agent answered, end-to-end encrypted")


def chat_between_new_users():
    first, second = readme_chat_commands()
    suffix = uuid.uuid4().hex[:8]
    # Brand-new users, in README order: the README's names made unique for this run.
    rename = lambda c: re.sub(r"\b(alice|bob)\b", lambda m: f"{m.group(1)}-{suffix}", c)
    first, second = rename(first), rename(second)
    text = f"hi, this is {suffix}"

    step(f"second side, waiting: {second}")
    reader = Terminal(second, cwd=ROOT)
    # Its device's keys are published once it says how the chat is protected.
    if not reader.read_until(lambda line: "end-to-end encrypted" in line, 600):
        fail(f"the second chat never said it is end-to-end encrypted:\n{reader.printed()}")

    step(f"first side: {first}")
    writer = subprocess.run(
        ["bash", "-c", first],
        cwd=ROOT,
        input=text + "\n",
        capture_output=True,
        text=True,
        timeout=600,
    )
    if writer.returncode != 0 or "✓ sent #" not in writer.stdout:
        fail(f"the first chat did not send (status {writer.returncode}):\n"
             f"{writer.stdout}\n{writer.stderr}")
    if "end-to-end encrypted" not in writer.stdout or "safety codes" not in writer.stdout:
        fail(f"the first chat did not say it is end-to-end encrypted:\n{writer.stdout}")

    received = reader.read_until(lambda line: text in line, 120)
    reader.close()
    if not received:
        fail(f"the second user did not receive {text!r}; their chat printed:\n{reader.printed()}")
    step("the second user received the first user's message")


def web_client(banner):
    url = banner_value(banner, "web client").rstrip("/")
    step(f"the banner's web client: {url}")
    with urllib.request.urlopen(url + "/", timeout=10) as response:
        if b"<title>Messaging</title>" not in response.read():
            fail("the web client URL does not serve the page")
    config = json.loads(urllib.request.urlopen(url + "/config.json", timeout=10).read())
    api = banner_value(banner, "HTTP API").split("/v1/")[0]
    ws = banner_value(banner, "WebSocket API").split("/?")[0]
    if config.get("api_url") != api or config.get("ws_url") != ws:
        fail(f"config.json {config} does not point at the banner's HTTP API {api} and WebSocket API {ws}")
    with urllib.request.urlopen(url + "/crypto.wasm", timeout=10) as response:
        if not response.read(4) == b"\0asm":
            fail("the web client's crypto module is not WebAssembly")
    step("the page, its config.json and its crypto module are served")
    newcomer = subprocess.run(
        ["node", os.path.join(ROOT, ".tools", "node-browser", "tests", "newcomer.mjs"), url,
         os.path.join(ROOT, "target", "smoke-web.png")],
        cwd=ROOT, env={**os.environ, "BROWSER_TESTS_ROOT": ROOT},
        capture_output=True, text=True, timeout=120,
    )
    if newcomer.returncode != 0:
        fail(f"the newcomer's browser session failed:\n{newcomer.stdout}{newcomer.stderr}")
    step(newcomer.stdout.strip())


def stop_stack(stack):
    pgid = stack.pid
    helpers = [m for m in process_group_members(pgid) if m[0] != stack.pid]
    step(f"stopping with ctrl-c (SIGINT to the process group; servers: {len(helpers)})")
    os.killpg(pgid, signal.SIGINT)
    try:
        stack.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(pgid, signal.SIGKILL)
        fail(f"the stack did not exit within {STOP_TIMEOUT:.0f} s of ctrl-c")
    time.sleep(0.5)
    left = process_group_members(pgid)
    if left:
        for pid, _ in left:
            os.kill(pid, signal.SIGKILL)
        fail(f"processes left behind after ctrl-c: {left}")
    step("the stack exited and left nothing behind")


def main():
    stack, banner = start_stack(readme_start_command())
    try:
        talk_to_the_demo_agent(banner)
        chat_with_the_demo_agent()
        chat_between_new_users()
        web_client(banner)
    except SystemExit:
        os.killpg(stack.pid, signal.SIGKILL)
        raise
    except BaseException as e:  # report, then never leave the stack running
        os.killpg(stack.pid, signal.SIGKILL)
        fail(f"{type(e).__name__}: {e}")
    stop_stack(stack)
    step("passed")


if __name__ == "__main__":
    main()
