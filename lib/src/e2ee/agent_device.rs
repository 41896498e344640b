//! An agent's device: what makes an agent an end-to-end encrypted endpoint. Agents have no
//! WebSocket, so everything a device does goes through the HTTP API with the agent's token
//! (a token whose subject is the agent id): it publishes its keys, reads its `to_device` queue
//! when a message's session key is not known yet (the sender stored the key before it sent
//! the message, so it is there), and sends its own session key to the conversation's member
//! devices before its first sealed piece of an answer. The agent SDK (`crate::agent`) uses it
//! when an [`AgentDevice`] is given to its host; agents in other languages get it from the
//! E2EE sidecar (`e2ee-sidecar`), which runs the SDK in front of them.
//!
//! One process is one device (its state in one file, replaced atomically); a state that was lost
//! publishes new keys in place of the old ones, and peers share their sessions again. An agent
//! pins the identities it sees like any device, but follows a change (logging it): nobody is
//! there to compare safety codes. Run one process per device id (several Lambda instances
//! sharing one id would replace each other's keys): give each its own `AGENT_DEVICE_ID`.

use std::path::PathBuf;
use std::time::Duration;

use sha2::Digest as _;
use tokio::sync::Mutex;

use crate::e2ee::device::{CryptoError, Plaintext};
use crate::e2ee::keyring::{Keyring, ONE_TIME_KEYS, OnConflict};
use crate::e2ee::{Envelope, KeyDirectory};
use crate::model::MessageReceived;
use crate::{Error, ErrorCode, Result};

/// Attempts at sending `to_device` messages the server stored but could not deliver live.
const SEND_ATTEMPTS: u32 = 3;

/// What an encrypted agent's device found in a delivered message.
#[derive(Debug, Clone, PartialEq)]
pub enum Opened {
    /// Ciphertext, opened.
    Sealed(Plaintext),
    /// Not ciphertext.
    Plaintext,
}

/// An agent's device (see the module doc).
pub struct AgentDevice {
    device_id: String,
    keyring: Mutex<Keyring>,
}

impl AgentDevice {
    /// Agent `agent_id`'s device `device_id` on the HTTP API at `api_url` with `token`, its
    /// state kept in `persist` (a file and the key it is encrypted with) when given; publishes
    /// its keys unless the directory has them.
    pub async fn start(
        api_url: &str,
        token: &str,
        agent_id: &str,
        device_id: &str,
        persist: Option<(PathBuf, [u8; 32])>,
    ) -> Result<Self> {
        crate::ids::check("device_id", device_id)?;
        let directory = KeyDirectory::new(api_url, token);
        // Not cached: an agent is told of no device change, so it reads devices for each run.
        let mut keyring = Keyring::load(directory, agent_id, device_id, persist, false)?;
        // Nobody can compare safety codes with an agent: it follows key changes, logging each.
        keyring.follow_identity_changes();
        keyring.publish_if_needed(OnConflict::Replace).await?;
        Ok(Self {
            device_id: device_id.to_string(),
            keyring: Mutex::new(keyring),
        })
    }

    /// The device the environment describes, or `None` without `AGENT_TOKEN`: the HTTP API at
    /// `API_URL`, the agent's token `AGENT_TOKEN`, the device id `AGENT_DEVICE_ID` (`agent`),
    /// and its state in `AGENT_KEYS_FILE`, encrypted with a key derived from
    /// `AGENT_KEYS_SECRET` (both or neither; without them the state lives as long as the
    /// process).
    pub async fn from_env(agent_id: &str) -> anyhow::Result<Option<Self>> {
        let Ok(token) = std::env::var("AGENT_TOKEN") else {
            return Ok(None);
        };
        let api_url = std::env::var("API_URL")
            .map_err(|_| anyhow::anyhow!("AGENT_TOKEN is set: API_URL must name the HTTP API"))?;
        let device_id = std::env::var("AGENT_DEVICE_ID").unwrap_or_else(|_| "agent".into());
        let persist = match (
            std::env::var("AGENT_KEYS_FILE"),
            std::env::var("AGENT_KEYS_SECRET"),
        ) {
            (Ok(file), Ok(secret)) => Some((PathBuf::from(file), state_key(&secret))),
            (Err(_), Err(_)) => None,
            _ => anyhow::bail!("AGENT_KEYS_FILE and AGENT_KEYS_SECRET go together"),
        };
        Ok(Some(
            Self::start(&api_url, &token, agent_id, &device_id, persist).await?,
        ))
    }

    /// This device's id.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The safety code of this device (what people compare with what their app shows).
    pub async fn safety_code(&self) -> String {
        let keys = self.keyring.lock().await.device().device_keys();
        crate::e2ee::directory::safety_code(&keys.identity.ed25519)
    }

    /// Opens a delivered message. A session key not known yet is read from the device's queue;
    /// if it is not there either, `unavailable` (deliver the message again later).
    pub async fn open(&self, message: &MessageReceived) -> Result<Opened> {
        if Envelope::parse(&message.body.content).is_err() {
            return Ok(Opened::Plaintext);
        }
        let mut keyring = self.keyring.lock().await;
        let open = |keyring: &mut Keyring| {
            keyring.open(
                &message.conversation_id,
                &message.sender_id,
                &message.message_id,
                &message.body.content,
            )
        };
        match open(&mut keyring) {
            Err(CryptoError::UnknownSession(_)) => {}
            other => return other.map(Opened::Sealed).map_err(refused),
        }
        self.read_queue(&mut keyring).await?;
        match open(&mut keyring) {
            Err(CryptoError::UnknownSession(session)) => Err(Error::retry_later(
                "agent keys",
                format!("the key of session {session} has not arrived"),
                Duration::from_secs(1),
            )),
            other => other.map(Opened::Sealed).map_err(refused),
        }
    }

    /// Reads, opens and acknowledges the device's `to_device` queue; tops up one-time keys for
    /// the sessions it started.
    async fn read_queue(&self, keyring: &mut Keyring) -> Result<()> {
        loop {
            let (items, more) = keyring
                .directory()
                .pending_to_device(&self.device_id)
                .await?;
            if items.is_empty() {
                return Ok(());
            }
            let started = Keyring::sessions_started(&items);
            let sequences = keyring.open_to_device(&items).await;
            if !sequences.is_empty() {
                keyring
                    .directory()
                    .ack_to_device(&self.device_id, &sequences)
                    .await?;
            }
            if started > 0 {
                let stored = keyring.top_up(started.min(ONE_TIME_KEYS)).await?;
                tracing::debug!(started, stored, "one-time keys topped up");
            }
            if !more || sequences.is_empty() {
                return Ok(());
            }
        }
    }

    /// Gives the conversation's member devices this device's current session key, if they lack
    /// it; false when the conversation is not encrypted (nobody else holds keys).
    pub async fn share(&self, conversation_id: &str) -> Result<bool> {
        let mut keyring = self.keyring.lock().await;
        let info = keyring.directory().conversation(conversation_id).await?;
        let recipients = keyring.recipients(&info).await?;
        if recipients.members.len() < 2 {
            return Ok(false);
        }
        let shares = keyring.key_shares(conversation_id, &recipients).await?;
        for batch in shares.chunks(crate::to_device::MAX_TO_DEVICE_MESSAGES) {
            let messages: Vec<_> = batch.iter().map(|(m, _)| m.clone()).collect();
            let mut attempt = 0;
            loop {
                attempt += 1;
                match keyring
                    .directory()
                    .send_to_device(&self.device_id, &messages)
                    .await
                {
                    Ok(()) => break,
                    // Same ids again: stored once, posted again.
                    Err(e) if e.code() == ErrorCode::Unavailable && attempt < SEND_ATTEMPTS => {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
            let devices: Vec<_> = batch.iter().map(|(_, d)| d.clone()).collect();
            keyring.shared(conversation_id, &devices);
        }
        Ok(true)
    }

    /// Seals `text` for the conversation (after [`AgentDevice::share`]).
    pub async fn seal(&self, conversation_id: &str, text: &str) -> Result<String> {
        self.keyring
            .lock()
            .await
            .seal(conversation_id, text.to_string(), serde_json::Value::Null)
    }
}

/// The key a device state file is encrypted with, from a secret of any length.
pub fn state_key(secret: &str) -> [u8; 32] {
    sha2::Sha256::digest(format!("messaging agent device state\n{secret}")).into()
}

/// A message that can never be opened here (altered, replayed, or not meant for this device).
fn refused(e: CryptoError) -> Error {
    Error::invalid(format!("the message cannot be decrypted: {e}"))
}
