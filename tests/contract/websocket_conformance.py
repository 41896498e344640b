"""The WebSocket API against its published AsyncAPI document, with clients this project did not
write (Python `websockets`, `jsonschema`).

Run against a running local stack (scripts/conformance starts one): LOCAL_STACK_DATA names its
data directory (endpoints in stack.json), LOCAL_STACK_BIN the binary that mints tokens.

1. The served document (`/asyncapi.json`) is the published one (`docs/contract/asyncapi.json`).
2. Every client frame kind the document lists is sent, built from the document's own example
   with real ids, and checked against its schema before it goes out; a kind this test does not
   know how to exercise fails the test, so a new frame cannot go untested.
3. Every frame the server sends, on every connection, is validated against the schema of its
   kind; the answers the document promises (`x-answer`) arrive.
4. The seeds' example frames validate where the document says they should, and where they do
   not, the document names the difference.
"""

import base64
import copy
import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7
from websockets.sync.client import connect

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.environ.get("LOCAL_STACK_DATA", os.path.join(ROOT, ".local-stack"))
BIN = os.environ.get("LOCAL_STACK_BIN", os.path.join(ROOT, "target", "debug", "local-stack"))
WAIT = 10.0
DOC_URI = "urn:messaging:asyncapi"

failures = []


def fail(message):
    failures.append(message)
    print(f"conformance: FAIL: {message}", file=sys.stderr, flush=True)


def step(message):
    print(f"conformance: {message}", flush=True)


def endpoints():
    with open(os.path.join(DATA, "stack.json"), encoding="utf-8") as f:
        return json.load(f)


def token(user, device=None):
    command = [BIN, "token", user, "--data-dir", DATA]
    if device:
        command += ["--device", device]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def http(method, url, token_=None, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("content-type", "application/json")
    if token_:
        request.add_header("authorization", f"Bearer {token_}")
    with urllib.request.urlopen(request, timeout=WAIT) as response:
        return json.loads(response.read() or b"null")


class Schemas:
    """Validators for the document's schemas, resolving its own `#/components/...` refs."""

    def __init__(self, doc):
        self.doc = doc
        resource = Resource(contents=doc, specification=DRAFT7)
        self.registry = Registry().with_resource(DOC_URI, resource)
        self.names = set(doc["components"]["schemas"])

    def errors(self, name, instance):
        validator = Draft7Validator(
            {"$ref": f"{DOC_URI}#/components/schemas/{name}"}, registry=self.registry
        )
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(instance)]


class Connection:
    """One WebSocket connection; every frame it receives is validated as it arrives."""

    def __init__(self, name, url, schemas, seen):
        self.name = name
        self.socket = connect(url, open_timeout=WAIT, max_size=None)
        self.frames = queue.Queue()
        self.schemas = schemas
        self.seen = seen
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for text in self.socket:
                frame = json.loads(text)
                kind = frame.get("type")
                schema = f"server_{kind}"
                if schema not in self.schemas.names:
                    fail(f"{self.name}: server sent a frame kind the document lacks: {text[:200]}")
                else:
                    for error in self.schemas.errors(schema, frame):
                        fail(f"{self.name}: {kind} does not match its schema: {error}: {text[:300]}")
                self.seen.add(kind)
                self.frames.put(frame)
        except Exception:  # closed
            pass

    def send(self, frame, schema=None):
        if schema:
            for error in self.schemas.errors(schema, frame):
                fail(f"the test's own {schema} frame is off the document: {error}")
        self.socket.send(frame if isinstance(frame, str) else json.dumps(frame))

    def expect(self, what, predicate, timeout=WAIT):
        deadline = time.monotonic() + timeout
        skipped = []
        while time.monotonic() < deadline:
            try:
                frame = self.frames.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if predicate(frame):
                for other in skipped:
                    self.frames.put(other)
                return frame
            skipped.append(frame)
        for other in skipped:
            self.frames.put(other)
        fail(f"{self.name}: no {what} within {timeout:.0f} s")
        return None

    def close(self):
        self.socket.close()


def sealed(text):
    """Content between people: a Megolm envelope as the document describes it. This client has no
    Megolm, so the ciphertext is `text`'s bytes (the shape is what the server checks)."""
    return json.dumps({"algorithm": "megolm.v1", "sender_key": "A" * 43, "device_id": "phone",
                       "session_id": "conformance", "ciphertext": base64.b64encode(text.encode()).decode().rstrip("=")},
                      separators=(",", ":"))


def example(doc, kind):
    """The document's example of client frame `kind`, copied."""
    message = doc["components"]["messages"][f"client.{kind}"]
    return copy.deepcopy(message["examples"][0]["payload"])


def check_seed_frames(doc, schemas):
    with open(os.path.join(ROOT, "tests", "contract", "seed_frames.json"), encoding="utf-8") as f:
        seeds = json.load(f)
    overview = doc["info"]["description"]
    for entry in seeds["frames"]:
        frame = entry["frame"]
        schema = f"{entry['direction']}_{frame['type']}"
        if schema not in schemas.names:
            fail(f"seed frame {schema} has no schema in the document")
            continue
        errors = schemas.errors(schema, frame)
        if entry["expect"] == "valid" and errors:
            fail(f"seed frame {schema} should validate: {errors}")
        if entry["expect"] == "deviation":
            if not errors:
                fail(f"seed frame {schema} validates: it is no longer a deviation")
            if entry["deviation"] not in overview:
                fail(f"seed frame {schema}: the document does not name the deviation "
                     f"\"{entry['deviation']}\"")
    step(f"{len(seeds['frames'])} seed frames checked against the document")


def main():
    stack = endpoints()
    api = stack["api_url"]
    served = http("GET", f"{api}/asyncapi.json")
    with open(os.path.join(ROOT, "docs", "contract", "asyncapi.json"), encoding="utf-8") as f:
        published = json.load(f)
    if served != published:
        fail("the served /asyncapi.json differs from docs/contract/asyncapi.json")
    doc = served
    schemas = Schemas(doc)
    check_seed_frames(doc, schemas)

    client_kinds = sorted(k.split(".", 1)[1] for k in doc["components"]["messages"] if k.startswith("client."))
    step(f"client frames in the document: {', '.join(client_kinds)}")

    run = uuid.uuid4().hex[:8]
    alice, bob = f"alice-{run}", f"bob-{run}"
    alice_token, bob_token = token(alice, "phone"), token(bob, "phone")
    conversation = http("POST", f"{api}/v1/conversations", alice_token, {"user_id": bob})["conversation_id"]
    ws = stack["ws_url"]
    seen = set()
    a = Connection("alice", f"{ws}?token={alice_token}&device_id=phone", schemas, seen)
    b = Connection("bob", f"{ws}?token={bob_token}&device_id=phone", schemas, seen)
    exercised = set()
    now = lambda: int(time.time() * 1000)  # noqa: E731

    # sync: the first frame of a connection opened with a token.
    for connection in (a, b):
        frame = example(doc, "sync")
        frame["since"] = {conversation: 0}
        connection.send(frame, "client_sync")
        connection.expect("auth_success after sync", lambda f: f["type"] == "auth_success")
    exercised.add("sync")

    # auth: a connection without a token authenticates with a frame.
    c = Connection("alice-tablet", f"{ws}", schemas, seen)
    frame = example(doc, "auth")
    frame["payload"].update({"user_id": alice, "auth_token": token(alice, "tablet"), "device_id": "tablet"})
    c.send(frame, "client_auth")
    c.expect("auth_success after auth", lambda f: f["type"] == "auth_success")
    d = Connection("stranger", f"{ws}", schemas, seen)
    frame = example(doc, "auth")
    frame["payload"].update({"user_id": alice, "auth_token": "not-a-token", "device_id": "x"})
    d.send(frame, "client_auth")
    d.expect("auth_error for a bad token", lambda f: f["type"] == "auth_error")
    exercised.add("auth")

    # message: acknowledged to the sender, delivered to the receiver, echoed to the sender's devices.
    frame = example(doc, "message")
    frame["client_message_id"] = f"c-{run}"
    frame["idempotency_key"] = str(uuid.uuid4())
    frame["payload"].update({"conversation_id": conversation, "receiver_id": bob, "content": sealed("hello"), "timestamp": now()})
    a.send(frame, "client_message")
    ack = a.expect("message_ack", lambda f: f["type"] == "message_ack" and f.get("client_message_id") == f"c-{run}")
    received = b.expect("the message at the receiver", lambda f: f["type"] == "message" and f["payload"]["content"] == sealed("hello"))
    c.expect("the message echoed to the sender's other device", lambda f: f["type"] == "message" and f["payload"]["content"] == sealed("hello"))
    exercised.add("message")
    if not (ack and received):
        return
    message_id = ack["payload"]["message_id"]
    seq = ack["payload"]["sequence_number"]
    # The same key again: the same ack, no second message.
    a.send(frame, "client_message")
    again = a.expect("the same message_ack for a retried key", lambda f: f["type"] == "message_ack" and f.get("client_message_id") == f"c-{run}")
    if again and again["payload"]["message_id"] != message_id:
        fail("a retried idempotency key made a second message")

    # Between people the server refuses what it could read.
    plain = example(doc, "message")
    plain.update({"client_message_id": f"p-{run}", "idempotency_key": str(uuid.uuid4())})
    plain["payload"].update({"conversation_id": conversation, "receiver_id": bob, "content": "hello in clear", "timestamp": now()})
    a.send(plain, "client_message")
    a.expect("invalid_request for plaintext between people",
             lambda f: f["type"] == "error" and f["code"] == "invalid_request" and f.get("client_message_id") == f"p-{run}")

    # delivery_ack: the sender hears it was delivered.
    frame = example(doc, "delivery_ack")
    frame.update({"message_id": message_id, "timestamp": now(), "conversation_id": conversation, "sequence_number": seq})
    b.send(frame, "client_delivery_ack")
    a.expect("delivery_ack at the sender", lambda f: f["type"] == "delivery_ack")
    exercised.add("delivery_ack")

    # read_receipt: the sender hears it was read.
    frame = example(doc, "read_receipt")
    frame.update({"message_ids": [message_id], "timestamp": now()})
    b.send(frame, "client_read_receipt")
    a.expect("read_receipt at the sender", lambda f: f["type"] == "read_receipt")
    exercised.add("read_receipt")

    # Groups: members' receipts reach the sender coalesced, as one `receipts` frame per interval.
    carol = f"carol-{run}"
    group = http("POST", f"{api}/v1/groups", alice_token,
                 {"name": f"conformance {run}", "participants": [bob, carol]})["conversation_id"]
    frame = example(doc, "message")
    frame["client_message_id"] = f"g-{run}"
    frame["idempotency_key"] = str(uuid.uuid4())
    frame["payload"].pop("receiver_id", None)
    frame["payload"].update({"conversation_id": group, "content": sealed("hello group"), "timestamp": now()})
    a.send(frame, "client_message")
    group_ack = a.expect("message_ack in the group",
                         lambda f: f["type"] == "message_ack" and f.get("client_message_id") == f"g-{run}")
    b.expect("the group message at a member",
             lambda f: f["type"] == "message" and f["payload"]["content"] == sealed("hello group"))
    if group_ack:
        frame = example(doc, "delivery_ack")
        frame.update({"message_id": group_ack["payload"]["message_id"], "timestamp": now(),
                      "conversation_id": group, "sequence_number": group_ack["payload"]["sequence_number"]})
        b.send(frame, "client_delivery_ack")
        receipts = a.expect(
            "receipts at the group's sender",
            lambda f: f["type"] == "receipts" and f["payload"]["conversation_id"] == group
            and any(m["user_id"] == bob for m in f["payload"].get("delivered", [])))
        if receipts and any(m["user_id"] == alice for m in receipts["payload"].get("delivered", [])):
            fail("a receipts frame names its own recipient")

    # heartbeat
    frame = example(doc, "heartbeat")
    frame["timestamp"] = now()
    a.send(frame, "client_heartbeat")
    a.expect("heartbeat_ack", lambda f: f["type"] == "heartbeat_ack")
    exercised.add("heartbeat")

    # retransmit
    frame = example(doc, "retransmit")
    frame.update({"conversation_id": conversation, "from_sequence": 1, "to_sequence": seq})
    b.send(frame, "client_retransmit")
    batch = b.expect("messages after retransmit", lambda f: f["type"] == "messages")
    if batch and seq not in [m["sequence_number"] for m in batch["payload"]["messages"]]:
        fail(f"retransmit 1..{seq} did not return message {seq}")
    exercised.add("retransmit")

    # typing
    frame = example(doc, "typing")
    frame.update({"conversation_id": conversation, "state": "start"})
    b.send(frame, "client_typing")
    a.expect("typing at the other participant", lambda f: f["type"] == "typing")
    exercised.add("typing")

    # presence
    frame = example(doc, "presence")
    frame["user_ids"] = [bob]
    a.send(frame, "client_presence")
    a.expect("presence", lambda f: f["type"] == "presence")
    exercised.add("presence")

    # An agent's answer, live: the demo agent streams it (message_delta), says how its run
    # stands (agent_run), and a participant can stop a run (cancel).
    demo = http("POST", f"{api}/v1/conversations", alice_token, {"agent_id": "demo-plain"})["conversation_id"]
    frame = example(doc, "message")
    frame.update({"client_message_id": f"d-{run}", "idempotency_key": str(uuid.uuid4())})
    frame["payload"] = {"conversation_id": demo, "content": "hello demo", "type": "text", "timestamp": now()}
    a.send(frame, "client_message")
    a.expect("message_ack from the demo conversation", lambda f: f["type"] == "message_ack" and f.get("client_message_id") == f"d-{run}")
    a.expect("message_delta from the demo agent", lambda f: f["type"] == "message_delta" and f["payload"]["conversation_id"] == demo)
    done = a.expect("agent_run completed", lambda f: f["type"] == "agent_run" and f["payload"]["state"] == "completed")
    answer = a.expect("the demo agent's stored answer", lambda f: f["type"] == "message" and f["payload"].get("sender_id") == "demo-plain")
    if done and answer and answer["payload"]["message_id"] != done["payload"].get("message_id"):
        fail("agent_run completed does not name the stored answer")
    frame = example(doc, "message")
    frame.update({"client_message_id": f"s-{run}", "idempotency_key": str(uuid.uuid4())})
    frame["payload"] = {"conversation_id": demo, "content": "/slow", "type": "text", "timestamp": now()}
    a.send(frame, "client_message")
    working = a.expect("agent_run working on a step", lambda f: f["type"] == "agent_run" and f["payload"]["state"] == "working" and f["payload"].get("step"))
    if working:
        frame = example(doc, "cancel")
        frame.update({"conversation_id": demo, "run_id": working["payload"]["run_id"]})
        a.send(frame, "client_cancel")
        a.expect("agent_run cancelled", lambda f: f["type"] == "agent_run" and f["payload"]["state"] == "cancelled")
        c.expect("agent_run cancelled on the other device", lambda f: f["type"] == "agent_run" and f["payload"]["state"] == "cancelled")
    exercised.add("cancel")

    # End-to-end encryption: a device's keys through the key directory, signed here with
    # `cryptography` from the rules the documents publish; key material with `to_device`. This
    # client has no Olm, so its to_device content is a shape-valid envelope of random bytes.
    def b64(raw):
        return base64.b64encode(raw).decode().rstrip("=")

    def public(private):
        return b64(private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    signing = Ed25519PrivateKey.generate()
    identity = {"curve25519": public(X25519PrivateKey.generate()), "ed25519": public(signing)}

    def signed(kind, key_id):
        key = public(X25519PrivateKey.generate())
        text = f"msg-e2ee/{kind}/v1\n{bob}\nphone\n{key_id}\n{key}"
        return {"key_id": key_id, "key": key, "signature": b64(signing.sign(text.encode()))}

    text = f"msg-e2ee/device-keys/v1\n{bob}\nphone\n{identity['curve25519']}\n{identity['ed25519']}"
    counts = http("PUT", f"{api}/v1/keys/phone", bob_token, {
        "identity": identity,
        "signature": b64(signing.sign(text.encode())),
        "one_time_keys": [signed("one-time-key", f"k{i}") for i in range(2)],
        "fallback_key": signed("fallback-key", "f1"),
    })
    if counts != {"one_time_key_count": 2, "has_fallback_key": True}:
        fail(f"publishing keys answered {counts}")
    a.expect("device_list for bob's new device", lambda f: f["type"] == "device_list" and f["payload"]["user_id"] == bob)
    devices = http("GET", f"{api}/v1/users/{bob}/keys", alice_token)["devices"]
    if [d["identity"] for d in devices] != [identity]:
        fail(f"bob's published devices read back as {devices}")
    claimed = http("POST", f"{api}/v1/keys/claim", alice_token,
                   {"devices": [{"user_id": bob, "device_id": "phone"}]})["keys"][0]
    key = claimed["key"]
    try:
        Ed25519PublicKey.from_public_bytes(base64.b64decode(identity["ed25519"] + "=")).verify(
            base64.b64decode(key["signature"] + "=="),
            f"msg-e2ee/one-time-key/v1\n{bob}\nphone\n{key['key_id']}\n{key['key']}".encode())
    except Exception as e:  # noqa: BLE001
        fail(f"a claimed key does not verify against its device's identity: {e!r}")
    b.expect("one_time_keys_low after a claim", lambda f: f["type"] == "one_time_keys_low" and f["payload"]["remaining"] == 1)
    envelope = {"algorithm": "olm.v1", "sender_key": public(X25519PrivateKey.generate()),
                "message_type": 0, "ciphertext": b64(os.urandom(96))}
    frame = example(doc, "to_device")
    frame["messages"][0].update({"message_id": str(uuid.uuid4()), "user_id": bob, "device_id": "phone",
                                 "content": json.dumps(envelope)})
    a.send(frame, "client_to_device")
    a.expect("to_device_sent", lambda f: f["type"] == "to_device_sent"
             and f["message_ids"] == [frame["messages"][0]["message_id"]])
    exercised.add("to_device")
    got = b.expect("to_device at bob's phone", lambda f: f["type"] == "to_device")
    if got:
        item = got["payload"]["messages"][0]
        if json.loads(item["content"]) != envelope or item["sender_id"] != alice:
            fail(f"to_device arrived as {item}")
        frame = example(doc, "to_device_ack")
        frame["sequences"] = [item["sequence"]]
        b.send(frame, "client_to_device_ack")
    exercised.add("to_device_ack")
    frame = example(doc, "to_device")
    frame["messages"][0].update({"user_id": bob, "device_id": "phone", "content": "plaintext"})
    a.send(frame, "client_to_device")
    a.expect("error for plaintext to_device", lambda f: f["type"] == "error" and f["code"] == "invalid_request")

    # Refusals are typed error frames.
    a.send("{not json")
    a.expect("error for malformed JSON", lambda f: f["type"] == "error" and f["code"] == "malformed_json")
    a.send({"type": "no_such_frame"})
    a.expect("error for an unknown type", lambda f: f["type"] == "error" and f["code"] == "unknown_type")
    a.send({"type": "message", "client_message_id": "bad", "payload": {"conversation_id": conversation}})
    a.expect("error for a message without its fields", lambda f: f["type"] == "error" and f["code"] == "invalid_request")

    untested = set(client_kinds) - exercised
    if untested:
        fail(f"client frames in the document this test does not exercise: {sorted(untested)}")
    promised = {"auth_success", "auth_error", "message", "message_ack", "delivery_ack", "read_receipt", "receipts",
                "heartbeat_ack", "messages", "typing", "presence", "error", "agent_run", "message_delta",
                "to_device", "to_device_sent", "device_list", "one_time_keys_low"}
    missing = promised - seen
    if missing:
        fail(f"server frames never seen: {sorted(missing)}")
    time.sleep(0.5)  # the last frames' validation
    for connection in (a, b, c, d):
        connection.close()
    server_kinds = sorted(k.split(".", 1)[1] for k in doc["components"]["messages"] if k.startswith("server."))
    step(f"client frames sent: {len(exercised)}; server frames validated: {sorted(seen)} "
         f"(of {server_kinds})")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # a crash is a failure with its reason
        fail(f"{type(e).__name__}: {e}")
    if failures:
        print(f"conformance: {len(failures)} failure(s)", file=sys.stderr)
        sys.exit(1)
    step("WebSocket API conforms to its AsyncAPI document")
