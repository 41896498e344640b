"""A streaming agent in Python, written from the published contract alone
(docs/contract/asyncapi.json) with the CloudEvents SDK: no code of this project.

It is an HTTP CloudEvents subscriber. The broker delivers it `messaging.message.received`
events whose `agentid` extension is its id, and `agent.cancel` when a participant stops one of
its runs. For each message it reports its run as working (`agent.progress` with a `run_id`),
streams its answer word by word (`agent.delta`, indexes from 0), and ends the run with the
whole answer (`agent.response` with the `run_id`). Its events go to the broker ingress as
binary-mode CloudEvents. The run id is the id of the message answered, so a redelivered
message is the same run (the platform drops repeated pieces and answers).

    BROKER_URL=http://127.0.0.1:8081 AGENT_ID=py-echo PORT=8090 python agent.py

Then point a broker trigger at it (local stack: `--triggers examples/agents/python/triggers.toml`)
and register the agent (`POST /v1/agents` with the operator key).
"""

import json
import os
import threading
import time
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent, from_http

BROKER_URL = os.environ.get("BROKER_URL", "http://127.0.0.1:8081")
AGENT_ID = os.environ.get("AGENT_ID", "py-echo")
PORT = int(os.environ.get("PORT", "8090"))
WORD_PAUSE = float(os.environ.get("WORD_PAUSE_SECS", "0.05"))
SOURCE = f"/agents/{AGENT_ID}"

cancelled = set()  # run ids a participant stopped
lock = threading.Lock()


def publish(event_type, data, event_id=None):
    """POSTs one CloudEvent to the broker ingress (binary mode)."""
    attributes = {"type": event_type, "source": SOURCE, "id": event_id or str(uuid.uuid4()),
                  "datacontenttype": "application/json"}
    headers, body = to_binary(CloudEvent(attributes, data))
    request = urllib.request.Request(BROKER_URL, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=10):
        pass


def answer(message):
    """One run: working, the answer word by word, then the whole answer."""
    run = message["message_id"]
    base = {"conversation_id": message["conversation_id"], "user_id": message["sender_id"],
            "agent_id": AGENT_ID}
    publish("agent.progress", {**base, "kind": "typing", "run_id": run, "state": "working",
                               "step": "echoing", "timestamp": int(time.time() * 1000)})
    words = f"Python agent here. You said: {message['content']}".split(" ")
    text = ""
    for index, word in enumerate(words):
        with lock:
            if run in cancelled:
                return  # stopped: the platform would drop anything more anyway
        piece = word if index == len(words) - 1 else word + " "
        publish("agent.delta", {**base, "run_id": run, "index": index, "text": piece,
                                "timestamp": int(time.time() * 1000)},
                event_id=f"delta/{run}/{index}")
        text += piece
        time.sleep(WORD_PAUSE)
    publish("agent.response", {**base, "idempotency_key": f"run/{run}", "response": text,
                               "in_reply_to": run, "message_type": "text", "run_id": run,
                               "timestamp": int(time.time() * 1000)},
            event_id=f"response/{run}")


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        try:
            event = from_http(dict(self.headers), body)
        except Exception as e:  # not a CloudEvent
            self.send_response(400)
            self.end_headers()
            self.wfile.write(str(e).encode())
            return
        data = event.data if isinstance(event.data, dict) else json.loads(event.data or "{}")
        if event["type"] == "agent.cancel":
            with lock:
                cancelled.add(data["run_id"])
        elif (event["type"] == "messaging.message.received"
              and data.get("sender_id") != AGENT_ID and data.get("type") != "system"):
            # Answered in the background: the delivery is acknowledged at once.
            threading.Thread(target=answer, args=(data,), daemon=True).start()
        self.send_response(202)
        self.end_headers()

    def do_GET(self):
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    print(f"agent {AGENT_ID} on :{PORT}, publishing to {BROKER_URL}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
