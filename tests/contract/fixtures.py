"""Data schemathesis cannot make up: a media object uploaded and completed by the token's user,
so the media routes reach their logic rather than answer 404. Prints `NAME=value` lines for
tests/contract/schemathesis.sh. Usage: fixtures.py API_URL TOKEN"""

import base64
import json
import struct
import sys
import urllib.request
import uuid
import zlib


def call(method, url, token=None, body=None, headers=None, raw=None):
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method)
    if body is not None:
        request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read()
        return json.loads(text) if text else None


def png():
    """A 1x1 PNG."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b""))


def main():
    api, token = sys.argv[1], sys.argv[2]
    peer = f"peer-{uuid.uuid4().hex[:8]}"
    conversation = call("POST", f"{api}/v1/conversations", token, {"user_id": peer})["conversation_id"]
    image = png()
    upload = call("POST", f"{api}/v1/media", token, {
        "conversation_id": conversation, "message_type": "image",
        "content_type": "image/png", "size_bytes": len(image),
    })
    put = upload["upload"]
    call(put["method"], put["url"], headers=put["headers"], raw=image)
    call("POST", f"{api}/v1/media/{upload['media_id']}/complete", token)
    print(f"MEDIA_ID={upload['media_id']}")
    print(f"CONVERSATION_ID={conversation}")


if __name__ == "__main__":
    main()
