"""Connection migration from the outside: a client this project did not write (Python
`websockets`), driven by the AsyncAPI document, against a local stack whose WebSocket API cuts
connections after GATEWAY_MAX_LIFETIME_SECS (as API Gateway does after 2 hours).

The client must be told `migration` before the cut (validated against the document's schema), and
when it does what the document says (open the new connection, `sync`, then close the old one) it
loses nothing: a message sent while both connections are open and one sent after the move both
arrive, and the server never closes either connection on it.

Environment: LOCAL_STACK_DATA, LOCAL_STACK_BIN (like websocket_conformance.py), LIFETIME_SECS.
"""

import json
import os
import sys
import time

from websocket_conformance import Connection, Schemas, endpoints, fail, failures, http, sealed, step, token

LIFETIME = float(os.environ.get("LIFETIME_SECS", "15"))


def main():
    with open("docs/contract/asyncapi.json", encoding="utf-8") as f:
        schemas = Schemas(json.load(f))
    stack = endpoints()
    ws, api = stack["ws_url"], stack["api_url"]
    suffix = os.urandom(4).hex()
    alice, bob = f"mig-alice-{suffix}", f"mig-bob-{suffix}"
    alice_token, bob_token = token(alice), token(bob)
    conversation = http("POST", f"{api}/v1/conversations", alice_token, {"user_id": bob})["conversation_id"]
    seen = set()
    old = Connection("alice (old)", f"{ws}?token={alice_token}&device_id=phone", schemas, seen)
    b = Connection("bob", f"{ws}?token={bob_token}&device_id=phone", schemas, seen)
    for c in (old, b):
        c.send({"type": "sync", "since": {}}, "client_sync")
        c.expect("auth_success after sync", lambda f: f["type"] == "auth_success")
    connected = time.time()

    step(f"waiting for `migration` (lifetime {LIFETIME:.0f} s)")
    migration = old.expect("migration before the lifetime cut", lambda f: f["type"] == "migration",
                           timeout=LIFETIME + 5)
    if migration is None:
        sys.exit(1)
    told_at = time.time()
    payload = migration["payload"]
    if payload.get("reason") != "lifetime":
        fail(f"migration reason: {payload}")
    deadline = payload.get("deadline", 0) / 1000.0
    if not told_at < deadline <= connected + LIFETIME + 2:
        fail(f"deadline {deadline} not between now {told_at} and the cut {connected + LIFETIME}")
    step(f"told {told_at - connected:.1f} s after connecting, {deadline - told_at:.1f} s before the cut")

    # Make-before-break, as the document says.
    target = payload.get("new_endpoint") or ws
    new = Connection("alice (new)", f"{target}?token={alice_token}&device_id=phone", schemas, seen)
    new.send({"type": "sync", "since": {conversation: 0}}, "client_sync")
    new.expect("auth_success on the new connection", lambda f: f["type"] == "auth_success")
    # While both are open, a message reaches alice (on both; she keeps one).
    b.send({"type": "message", "client_message_id": "overlap", "idempotency_key": f"k-overlap-{suffix}",
            "payload": {"conversation_id": conversation, "type": "text", "content": sealed("during the move"),
                        "timestamp": int(time.time() * 1000)}}, "client_message")
    b.expect("ack", lambda f: f["type"] == "message_ack" and f.get("client_message_id") == "overlap")
    new.expect("the overlap message on the new connection",
               lambda f: f["type"] == "message" and f["payload"]["content"] == sealed("during the move"))
    old.close()
    # Past the old connection's cut, the new one lives on and gets what is sent (by bob from a
    # fresh connection: his first one reached its lifetime too).
    time.sleep(max(0.0, deadline - time.time()) + 1.0)
    b.close()
    b = Connection("bob (again)", f"{ws}?token={bob_token}&device_id=phone", schemas, seen)
    b.send({"type": "message", "client_message_id": "after", "idempotency_key": f"k-after-{suffix}",
            "payload": {"conversation_id": conversation, "type": "text", "content": sealed("after the move"),
                        "timestamp": int(time.time() * 1000)}}, "client_message")
    new.expect("the next message on the new connection",
               lambda f: f["type"] == "message" and f["payload"]["content"] == sealed("after the move"))
    new.send({"type": "heartbeat", "timestamp": 0}, "client_heartbeat")
    new.expect("heartbeat_ack", lambda f: f["type"] == "heartbeat_ack")
    time.sleep(0.3)
    for c in (new, b):
        c.close()
    if failures:
        print(f"migration: {len(failures)} failure(s)", file=sys.stderr)
        sys.exit(1)
    step("migration: told before the cut, moved make-before-break, nothing lost")


if __name__ == "__main__":
    main()
