"""The example agents answer through the local stack, seen only through the published contract:
each is registered through the HTTP API and reached through the broker, and a Python
`websockets` client validates every frame against the AsyncAPI document.

- `py-echo` (examples/agents/python, the CloudEvents SDK and the contract, no code of ours)
  streams its answer and ends the run.
- `reverse` (examples/agents/rust, the Rust agent SDK) streams, reports its step, asks a
  question (`input_required`), and stops when a participant cancels: nothing of the cancelled
  run is stored.
- `py-secret`: the same Python agent, unchanged, behind the E2EE sidecar (infra/e2ee-sidecar):
  a person's `chat` CLI (encrypting) reads its answer, and the HTTP API returns only
  ciphertext for the conversation."""

import json
import os
import subprocess
import sys
import time
import uuid

import websocket_conformance as wc
from terminal import Terminal


def register(api, agent_id, name):
    operator = os.environ.get("OPERATOR_KEY", "local-operator-key")
    request = wc.urllib.request.Request(
        f"{api}/v1/agents", method="POST",
        data=json.dumps({"agent_id": agent_id, "name": name,
                         "description": "an example agent"}).encode(),
        headers={"content-type": "application/json", "x-operator-key": operator})
    try:
        wc.urllib.request.urlopen(request, timeout=wc.WAIT).close()
    except wc.urllib.error.HTTPError as e:
        if e.code != 409:  # registered by an earlier run
            raise


class Chat:
    """A fresh user in a conversation with `agent`, connected and synced."""

    def __init__(self, stack, schemas, agent):
        self.api = stack["api_url"]
        self.agent = agent
        user = f"carol-{uuid.uuid4().hex[:8]}"
        token = wc.token(user, "phone")
        self.conversation = wc.http("POST", f"{self.api}/v1/conversations", token,
                                    {"agent_id": agent})["conversation_id"]
        self.client = wc.Connection(user, f"{stack['ws_url']}?token={token}&device_id=phone",
                                    schemas, set())
        self.client.send({"type": "sync", "since": {}}, "client_sync")
        self.client.expect("auth_success", lambda f: f["type"] == "auth_success")
        self.sent = 0

    def say(self, text):
        """Sends `text`; returns the id of the message (the run id of the agent's answer)."""
        self.sent += 1
        self.client.send({"type": "message", "client_message_id": f"m-{self.sent}",
                          "idempotency_key": str(uuid.uuid4()),
                          "payload": {"conversation_id": self.conversation, "content": text,
                                      "type": "text", "timestamp": 0}}, "client_message")
        ack = self.client.expect("message_ack", lambda f: f["type"] == "message_ack")
        return ack and ack["payload"]["message_id"]

    def run_state(self, run_id, state, timeout=wc.WAIT):
        return self.client.expect(
            f"agent_run {state}",
            lambda f: f["type"] == "agent_run" and f["payload"]["run_id"] == run_id
            and f["payload"]["state"] == state, timeout)

    def answer(self, timeout=30):
        return self.client.expect(
            f"{self.agent}'s answer",
            lambda f: f["type"] == "message" and f["payload"].get("sender_id") == self.agent,
            timeout)


def streamed(frames):
    """The text a device shows from `message_delta` frames, applied by the documented rule."""
    text, have = "", 0
    for f in sorted(frames, key=lambda f: f["payload"]["from_index"]):
        p = f["payload"]
        if p.get("snapshot") and p["to_index"] > have:
            text, have = p["text"], p["to_index"]
        elif p["from_index"] == have:
            text, have = text + p["text"], p["to_index"]
    return text


def python_agent(stack, schemas):
    register(stack["api_url"], "py-echo", "Python echo")
    chat = Chat(stack, schemas, "py-echo")
    chat.say("hello python")
    chat.client.expect("message_delta from the Python agent",
                       lambda f: f["type"] == "message_delta" and f["payload"]["agent_id"] == "py-echo")
    answer = chat.answer()
    if answer and answer["payload"]["content"] != "Python agent here. You said: hello python":
        wc.fail(f"unexpected answer: {answer['payload']['content']!r}")
    chat.client.close()
    wc.step(f"the Python example agent answered: {answer and answer['payload']['content']!r}")


def rust_agent(stack, schemas):
    register(stack["api_url"], "reverse", "Reverse")
    chat = Chat(stack, schemas, "reverse")

    # A streamed answer, with the step shown while it works.
    run = chat.say("one two three four")
    chat.client.expect("agent_run working on a step",
                       lambda f: f["type"] == "agent_run" and f["payload"]["run_id"] == run
                       and f["payload"]["state"] == "working" and f["payload"].get("step") == "reversing")
    done = chat.run_state(run, "completed", timeout=30)
    answer = chat.answer()
    deltas = []
    while True:
        try:
            frame = chat.client.frames.get_nowait()
        except wc.queue.Empty:
            break
        if frame["type"] == "message_delta" and frame["payload"]["run_id"] == run:
            deltas.append(frame)
    if answer and answer["payload"]["content"] != "four three two one":
        wc.fail(f"reverse: unexpected answer {answer['payload']['content']!r}")
    if answer and done and done["payload"].get("message_id") != answer["payload"]["message_id"]:
        wc.fail("reverse: the completed run does not name the stored answer")
    if streamed(deltas) not in ("", "four three two one"):
        wc.fail(f"reverse: the streamed text {streamed(deltas)!r} is not the answer")

    # A question for the user.
    asked = chat.run_state(chat.say("?"), "input_required")
    if asked and asked["payload"].get("reason") != "What should I reverse?":
        wc.fail(f"reverse: unexpected question {asked['payload']!r}")

    # A cancel mid-stream: the run ends cancelled and no answer is stored.
    run = chat.say(" ".join(f"w{i}" for i in range(200)))
    chat.client.expect("the first message_delta",
                       lambda f: f["type"] == "message_delta" and f["payload"]["run_id"] == run)
    chat.client.send({"type": "cancel", "conversation_id": chat.conversation, "run_id": run},
                     "client_cancel")
    chat.run_state(run, "cancelled")
    # Whatever the agent still had in flight is dropped: no answer reaches the device.
    until = time.monotonic() + 3
    while time.monotonic() < until:
        try:
            frame = chat.client.frames.get(timeout=max(0.01, until - time.monotonic()))
        except wc.queue.Empty:
            break
        if frame["type"] == "message" and frame["payload"].get("sender_id") == "reverse":
            wc.fail(f"reverse: an answer was stored after the cancel: {frame['payload']['content'][:80]!r}")
    chat.client.close()
    wc.step("the Rust example agent streamed, asked, and stopped when cancelled")


def python_agent_behind_the_sidecar(stack):
    agent = "py-secret"
    register(stack["api_url"], agent, "Python behind the E2EE sidecar")
    logs = os.path.join(wc.ROOT, "target", "conformance")
    bin_dir = os.path.dirname(wc.BIN)
    # The agent as it is, publishing to the sidecar; the sidecar where the triggers deliver.
    agent_env = {**os.environ, "AGENT_ID": agent, "PORT": "18087",
                 "BROKER_URL": "http://127.0.0.1:18088"}
    sidecar_env = {**os.environ, "AGENT_ID": agent, "AGENT_URL": "http://127.0.0.1:18087/",
                   "PORT": "18089", "SIDECAR_PORT": "18088", "BROKER_URL": stack["broker_url"],
                   "API_URL": stack["api_url"], "AGENT_TOKEN": wc.token(agent),
                   "AGENT_DEVICE_ID": "sidecar"}
    with open(os.path.join(logs, "py-secret.log"), "w") as agent_log, \
            open(os.path.join(logs, "sidecar.log"), "w") as sidecar_log:
        processes = [
            subprocess.Popen([sys.executable, os.path.join(wc.ROOT, "examples/agents/python/agent.py")],
                             env=agent_env, stdout=agent_log, stderr=subprocess.STDOUT),
            subprocess.Popen([os.path.join(bin_dir, "e2ee-sidecar")], env=sidecar_env,
                             stdout=sidecar_log, stderr=subprocess.STDOUT),
        ]
        try:
            talk_through_the_sidecar(stack, agent)
        finally:
            for p in processes:
                p.kill()


def talk_through_the_sidecar(stack, agent):
    deadline = time.time() + 60
    while True:
        try:
            wc.urllib.request.urlopen("http://127.0.0.1:18089/healthz", timeout=2).close()
            break
        except OSError:
            if time.time() > deadline:
                wc.fail("the sidecar did not come up (target/conformance/sidecar.log)")
                return
            time.sleep(0.5)
    user = f"dora-{uuid.uuid4().hex[:8]}"
    chat = Terminal([os.path.join(os.path.dirname(wc.BIN), "chat"), "--user", user,
                     "--agent", agent, "--data-dir", wc.DATA])
    try:
        if not chat.read_until(lambda line: "end-to-end encrypted" in line, 120) \
                or "not end-to-end encrypted" in chat.printed():
            wc.fail(f"the chat with the agent behind the sidecar is not encrypted:\n{chat.printed()}")
            return
        text = "hello from behind the sidecar"
        chat.type(text)
        # The stored answer: "✓ #N from agent" after the streamed line, or the whole message.
        answered = chat.read_until(lambda line: ("✓ #" in line and f"from {agent}" in line)
                                   or f" {agent}: Python agent here" in line, 60)
    finally:
        chat.close()
    printed = chat.printed()
    # (A system line may land inside the streamed line: the words are checked, not the layout.)
    if not answered or f"You said: {text}" not in printed:
        wc.fail(f"no answer from the agent behind the sidecar:\n{printed}")
        return
    if "[not encrypted]" in printed or "cannot be decrypted" in printed:
        wc.fail(f"the sidecar's answer was not sealed for the chat's device:\n{printed}")
        return
    conversation = printed.split("conversation ", 1)[1].split(";", 1)[0].strip()
    stored = wc.http("GET", f"{stack['api_url']}/v1/conversations/{conversation}/messages",
                     wc.token(user))
    # People's and the agent's messages; the server's own `system` notices are plaintext.
    contents = [m["content"] for m in stored["messages"] if m.get("type") != "system"
                and m.get("message_type") != "system"]
    if len(contents) < 2 or any(json.loads(c).get("algorithm") != "megolm.v1" for c in contents):
        wc.fail(f"the server holds something other than ciphertext: {contents}")
    if any(text in c or "Python agent here" in c for c in contents):
        wc.fail("the server holds the plaintext")
    wc.step(f"the Python agent behind the E2EE sidecar answered, sealed ({len(contents)} messages stored as ciphertext)")


def main():
    stack = wc.endpoints()
    doc = wc.http("GET", f"{stack['api_url']}/asyncapi.json")
    schemas = wc.Schemas(doc)
    python_agent(stack, schemas)
    rust_agent(stack, schemas)
    python_agent_behind_the_sidecar(stack)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:
        wc.fail(f"{type(e).__name__}: {e}")
    if wc.failures:
        sys.exit(1)
