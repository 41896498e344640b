//! End-to-end encryption: what the server checks and routes, and what devices compute.
//!
//! The server never holds a key that opens a message. Devices agree on keys through it:
//!
//! - [`directory`]: each device publishes its identity keys (Curve25519 for key agreement,
//!   Ed25519 for signatures), signed by itself, with a batch of signed one-time keys and a signed
//!   fallback key. Another device claims one one-time key to start an Olm session (each is
//!   handed out once; the fallback key when none are left). The types here are the HTTP
//!   API's bodies; the signatures are checked by the server on upload and by devices on use.
//! - [`envelope`]: the `content` of an encrypted message (Megolm, one outbound session per
//!   sending device and conversation) and of a `to_device` message (Olm, between two devices).
//!   The server checks the shape of both and refuses plaintext between people.
//! - [`device`]: a device's keys and sessions ([`device::CryptoDevice`], `vodozemac`): Olm
//!   sessions carry Megolm session keys to every member device; Megolm encrypts content once for
//!   the whole conversation.
//! - [`attachment`]: media sealed on the device (AES-256-GCM), the key inside the sealed
//!   message.
//! - [`key_directory`]: the directory's HTTP routes as a device's user calls them;
//!   [`keyring`]: a device with its saved state and its directory, what every encrypting
//!   party shares (publishes keys, shares session keys, seals and opens).
//! - `client` (feature `client`): the WebSocket client with all of the above, for apps and
//!   tests; the agent SDK (`crate::agent`) does the same for agents over HTTP and CloudEvents.
//!
//! References: the Olm and Megolm specifications (matrix-org/olm `docs/olm.md`,
//! `docs/megolm.md`), implemented by `vodozemac`; the Signal X3DH and Double Ratchet papers
//! they follow.

pub mod agent_device;
pub mod attachment;
#[cfg(feature = "client")]
pub mod client;
pub mod device;
pub mod directory;
pub mod envelope;
pub mod key_directory;
pub mod keyring;

pub use agent_device::AgentDevice;
pub use device::{CryptoDevice, CryptoError, Plaintext, RoomKey, Trust};
pub use directory::{DeviceKeys, IdentityKeys, KeyKind, SignedKey};
pub use envelope::{Algorithm, Envelope, OlmEnvelope};
pub use key_directory::{ConversationInfo, KeyDirectory};
pub use keyring::{Keyring, OnConflict, Recipients};
