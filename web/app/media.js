// End-to-end encrypted attachments (images, voice notes, documents), as lib/src/e2ee/attachment.rs
// makes them, with the browser's WebCrypto: the bytes are sealed on this device with a fresh
// AES-256-GCM key (ciphertext and tag, as aws-lc seals them), uploaded through the presign API
// in its encrypted mode (the storage checks the ciphertext's SHA-256), and the key, nonce and
// hash travel inside the sealed message (`extra.attachment`). A receiving device checks the hash
// and the tag before it shows a byte. An image also carries a small JPEG thumbnail inside the
// sealed message (`extra.thumbnail`), shown before the image is fetched.

/** The presign API's content type for sealed bytes. */
const SEALED_CONTENT_TYPE = "application/octet-stream";
/** Longest side of an image's thumbnail, in pixels. */
const THUMBNAIL_SIDE = 160;
/** Deadline of one upload or download. */
const TRANSFER_DEADLINE_MS = 120_000;

function base64(bytes, { padded = false } = {}) {
  let text = "";
  const view = new Uint8Array(bytes);
  for (let at = 0; at < view.length; at += 0x8000) {
    text += String.fromCharCode(...view.subarray(at, at + 0x8000));
  }
  const encoded = btoa(text);
  return padded ? encoded : encoded.replace(/=+$/, "");
}

function fromBase64(text) {
  const padded = text + "=".repeat((4 - (text.length % 4)) % 4);
  return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
}

/** The message type a file travels as. */
export function messageTypeOf(file) {
  if (file.type.startsWith("image/")) return "image";
  if (file.type.startsWith("video/")) return "video";
  if (file.type.startsWith("audio/")) return "audio";
  return "document";
}

/** Seals `bytes`: the ciphertext and its attachment record (without the media id). */
export async function seal(bytes, contentType, name = null) {
  const key = crypto.getRandomValues(new Uint8Array(32));
  const nonce = crypto.getRandomValues(new Uint8Array(12));
  const aes = await crypto.subtle.importKey("raw", key, "AES-GCM", false, ["encrypt"]);
  const ciphertext = await crypto.subtle.encrypt({ name: "AES-GCM", iv: nonce }, aes, bytes);
  const digest = await crypto.subtle.digest("SHA-256", ciphertext);
  return {
    ciphertext,
    attachment: {
      media_id: "",
      content_type: contentType,
      size_bytes: bytes.byteLength,
      ...(name ? { name } : {}),
      algorithm: "A256GCM",
      key: base64(key),
      nonce: base64(nonce),
      sha256: base64(digest),
    },
  };
}

/** Opens sealed bytes: their hash and GCM tag must verify. */
export async function open(ciphertext, attachment) {
  if (attachment.algorithm !== "A256GCM") throw new Error(`attachment algorithm ${attachment.algorithm}`);
  const digest = base64(await crypto.subtle.digest("SHA-256", ciphertext));
  if (digest !== attachment.sha256) throw new Error("the attachment's bytes do not match their hash");
  const aes = await crypto.subtle.importKey("raw", fromBase64(attachment.key), "AES-GCM", false, ["decrypt"]);
  try {
    return await crypto.subtle.decrypt({ name: "AES-GCM", iv: fromBase64(attachment.nonce) }, aes, ciphertext);
  } catch {
    throw new Error("the attachment does not verify");
  }
}

/**
 * Seals and uploads `file` for a message of `messageType` in the conversation; returns the
 * attachment record to send sealed (its `media_id` is the message's `media_url`).
 */
export async function upload(api, conversationId, messageType, file, name = file.name ?? null) {
  const bytes = await file.arrayBuffer();
  const { ciphertext, attachment } = await seal(bytes, file.type || SEALED_CONTENT_TYPE, name);
  const granted = await api.call("POST", "/v1/media", {
    conversation_id: conversationId,
    message_type: messageType,
    content_type: SEALED_CONTENT_TYPE,
    size_bytes: ciphertext.byteLength,
    checksum_sha256: base64(await crypto.subtle.digest("SHA-256", ciphertext), { padded: true }),
    encrypted: true,
  });
  const headers = {};
  for (const [header, value] of Object.entries(granted.upload.headers)) {
    // The browser sets these itself (and refuses to be told).
    if (header !== "content-length" && header !== "host") headers[header] = value;
  }
  const stored = await fetch(granted.upload.url, {
    method: "PUT",
    headers,
    body: ciphertext,
    signal: AbortSignal.timeout(TRANSFER_DEADLINE_MS),
  });
  if (!stored.ok) throw new Error(`the upload was refused (${stored.status})`);
  await api.call("POST", `/v1/media/${encodeURIComponent(granted.media_id)}/complete`, {});
  return { ...attachment, media_id: granted.media_id };
}

/** Downloads and opens an attachment: a Blob of its content type. */
export async function download(api, attachment) {
  const granted = await api.call("GET", `/v1/media/${encodeURIComponent(attachment.media_id)}`);
  const response = await fetch(granted.download.url, { signal: AbortSignal.timeout(TRANSFER_DEADLINE_MS) });
  if (!response.ok) throw new Error(`the download failed (${response.status})`);
  const bytes = await open(await response.arrayBuffer(), attachment);
  return new Blob([bytes], { type: attachment.content_type });
}

/** A small JPEG of an image file (a data URL), or null when it cannot be drawn. */
export async function thumbnail(file) {
  try {
    const bitmap = await createImageBitmap(file);
    const scale = Math.min(1, THUMBNAIL_SIDE / Math.max(bitmap.width, bitmap.height));
    const canvas = document.createElement("canvas");
    canvas.width = Math.max(1, Math.round(bitmap.width * scale));
    canvas.height = Math.max(1, Math.round(bitmap.height * scale));
    canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    return canvas.toDataURL("image/jpeg", 0.6);
  } catch {
    return null;
  }
}
