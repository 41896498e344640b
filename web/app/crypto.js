// The crypto module: web/crypto (lib's end-to-end encryption core in Rust, compiled to
// WebAssembly) behind one JSON call. One instance holds one device; its operations are listed
// in web/crypto/src/ops.rs. Randomness comes from crypto.getRandomValues.

/** A refusal of the crypto module (a message that does not open, a malformed key, ...). */
export class CryptoError extends Error {
  constructor(op, reason) {
    super(`${op}: ${reason}`);
    this.op = op;
    this.reason = reason;
  }
}

/**
 * Loads the module from `source` (a URL, or its bytes) and returns `call(op, args)`, which
 * answers the operation's result or throws a CryptoError.
 */
export async function loadCrypto(source = "crypto.wasm") {
  let memory = null;
  const imports = {
    env: {
      random_fill(pointer, len) {
        const view = new Uint8Array(memory.buffer, pointer, len);
        // getRandomValues fills at most 65,536 bytes at a time.
        for (let at = 0; at < len; at += 65536) {
          crypto.getRandomValues(view.subarray(at, Math.min(len, at + 65536)));
        }
      },
    },
  };
  const bytes =
    typeof source === "string" ? await (await fetch(source)).arrayBuffer() : source;
  const { instance } = await WebAssembly.instantiate(bytes, imports);
  memory = instance.exports.memory;
  const { alloc, dealloc, call_json: callJson } = instance.exports;
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();
  return function call(op, args = {}) {
    const request = encoder.encode(JSON.stringify({ op, ...args }));
    const pointer = alloc(request.length);
    new Uint8Array(memory.buffer, pointer, request.length).set(request);
    const packed = BigInt.asUintN(64, BigInt(callJson(pointer, request.length)));
    const answerAt = Number(packed >> 32n);
    const answerLen = Number(packed & 0xffffffffn);
    const text = decoder.decode(new Uint8Array(memory.buffer, answerAt, answerLen));
    dealloc(answerAt, answerLen);
    const answer = JSON.parse(text);
    if ("error" in answer) throw new CryptoError(op, answer.error);
    return answer.ok;
  };
}
