//! What a running local stack leaves in its data directory, so that the other commands use *that*
//! stack: its token signing key (`jwt-secret`) and its endpoints (`stack.json`).
//!
//! `local-stack token` and the `chat` CLI mint tokens with the running stack's key and find its
//! endpoints here, whatever ports it was started on. Neither ever creates a key: a token signed
//! with a fresh key would be refused by the stack with a bare 401, which is exactly the confusion
//! this module exists to prevent. Only the stack itself creates the key, on its first start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use messaging::auth::JwtIssuer;
use serde::{Deserialize, Serialize};

/// Issuer of the local stack's tokens.
pub const JWT_ISSUER: &str = "messaging";
/// Audience of the local stack's tokens.
pub const JWT_AUDIENCE: &str = "messaging-clients";
/// The data directory when none is given (relative to where the stack runs: the repository).
pub const DEFAULT_DATA_DIR: &str = ".local-stack";
/// File of the signing key, in the data directory.
const SECRET_FILE: &str = "jwt-secret";
/// File of the running stack's endpoints, in the data directory.
const ENDPOINTS_FILE: &str = "stack.json";

/// The endpoints of a running stack, as written to `stack.json` when it is up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    /// Process id of the stack.
    pub pid: u32,
    /// `ws://HOST:PORT` of the WebSocket API.
    pub ws_url: String,
    /// `http://HOST:PORT` of the `@connections` management API.
    pub management_url: String,
    /// Broker ingress.
    pub broker_url: String,
    /// S3 endpoint.
    pub s3_url: String,
    /// Demo agent, when it runs.
    pub agent_url: Option<String>,
    /// HTTP API.
    pub api_url: String,
    /// The web client, when served.
    #[serde(default)]
    pub web_url: Option<String>,
}

impl Endpoints {
    /// Records the endpoints of the stack running in this process.
    pub fn write(&self, data_dir: &Path) -> anyhow::Result<()> {
        let path = data_dir.join(ENDPOINTS_FILE);
        std::fs::write(&path, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// The endpoints of the stack running with this data directory, if one is.
    pub fn of_running(data_dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(data_dir.join(ENDPOINTS_FILE)).ok()?;
        let endpoints: Self = serde_json::from_str(&text).ok()?;
        process_alive(endpoints.pid).then_some(endpoints)
    }

    /// Removes the record (the stack is stopping).
    pub fn remove(data_dir: &Path) {
        let _ = std::fs::remove_file(data_dir.join(ENDPOINTS_FILE));
    }
}

fn process_alive(pid: u32) -> bool {
    // Signal 0 checks that the process exists without touching it.
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) with signal 0 only checks for the process; it has no other effect.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// The signing key of the stack with this data directory: `JWT_HS256_SECRET` when set, else the
/// key the stack created in `data_dir/jwt-secret` on its first start, created here if missing.
/// Only the stack calls this.
pub fn signing_secret_or_create(data_dir: &Path) -> anyhow::Result<String> {
    if let Some(secret) = secret_from_env() {
        return Ok(secret);
    }
    if let Ok(secret) = std::fs::read_to_string(data_dir.join(SECRET_FILE)) {
        return Ok(secret.trim().to_string());
    }
    std::fs::create_dir_all(data_dir)?;
    let bytes: [u8; 32] = rand::random();
    let secret = hex_string(&bytes);
    std::fs::write(data_dir.join(SECRET_FILE), &secret)?;
    Ok(secret)
}

/// The signing key of an existing stack: `JWT_HS256_SECRET` when set, else `data_dir/jwt-secret`.
/// Fails, saying what to do, when the directory holds no key (never started, or a wrong
/// `--data-dir`): a token signed with any other key would be refused.
pub fn signing_secret(data_dir: &Path) -> anyhow::Result<String> {
    if let Some(secret) = secret_from_env() {
        return Ok(secret);
    }
    let path = data_dir.join(SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(secret) if !secret.trim().is_empty() => Ok(secret.trim().to_string()),
        _ => anyhow::bail!(
            "no local stack key at {}: start the stack first (./scripts/dev), or pass the \
             --data-dir it runs with (or set LOCAL_STACK_DATA)",
            path.display()
        ),
    }
}

fn secret_from_env() -> Option<String> {
    std::env::var("JWT_HS256_SECRET")
        .ok()
        .filter(|s| !s.is_empty())
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A token for `user_id` (and `device`), valid for `ttl`, signed with the key of the stack whose
/// data directory is `data_dir` (see [`signing_secret`]).
pub fn token(
    data_dir: &Path,
    user_id: &str,
    device: Option<&str>,
    ttl: Duration,
) -> anyhow::Result<String> {
    if user_id.trim().is_empty() {
        anyhow::bail!("the user id must not be empty");
    }
    let issuer = JwtIssuer::hs256(
        signing_secret(data_dir)?.as_bytes(),
        JWT_ISSUER,
        JWT_AUDIENCE,
    );
    let mut claims = issuer.claims(user_id, ttl);
    claims.device_id = device.map(str::to_string);
    Ok(issuer.sign(&claims)?)
}

/// The data directory as a person would type it in a command: as given.
pub fn shown(data_dir: &Path) -> String {
    let text = data_dir.display().to_string();
    if text.contains(char::is_whitespace) {
        format!("'{text}'")
    } else {
        text
    }
}

/// `--data-dir DIR` when `data_dir` is not the default, for commands printed to people.
pub fn data_dir_flag(data_dir: &Path) -> String {
    if data_dir == Path::new(DEFAULT_DATA_DIR) {
        String::new()
    } else {
        format!(" --data-dir {}", shown(data_dir))
    }
}

/// The default data directory as a path.
pub fn default_data_dir() -> PathBuf {
    PathBuf::from(DEFAULT_DATA_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_without_a_key_is_an_error_that_says_what_to_do() {
        if secret_from_env().is_some() {
            return; // the variable wins by design
        }
        let dir = std::env::temp_dir().join(format!("no-stack-{}", uuid::Uuid::new_v4()));
        let err = token(&dir, "alice", None, Duration::from_secs(60))
            .unwrap_err()
            .to_string();
        assert!(err.contains("start the stack first"), "{err}");
        assert!(err.contains("--data-dir"), "{err}");
        assert!(!dir.exists(), "nothing may be created");
    }

    #[test]
    fn the_stack_creates_its_key_once_and_tokens_use_it() {
        if secret_from_env().is_some() {
            return;
        }
        let dir = std::env::temp_dir().join(format!("stack-{}", uuid::Uuid::new_v4()));
        let first = signing_secret_or_create(&dir).unwrap();
        assert_eq!(signing_secret_or_create(&dir).unwrap(), first);
        assert_eq!(signing_secret(&dir).unwrap(), first);
        assert!(token(&dir, "alice", Some("phone"), Duration::from_secs(60)).is_ok());
        assert!(token(&dir, " ", None, Duration::from_secs(60)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn endpoints_of_a_dead_process_are_ignored() {
        let dir = std::env::temp_dir().join(format!("stack-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut endpoints = Endpoints {
            pid: std::process::id(),
            ws_url: "ws://127.0.0.1:1".into(),
            management_url: "http://127.0.0.1:1".into(),
            broker_url: "http://127.0.0.1:2/".into(),
            s3_url: "http://127.0.0.1:3".into(),
            agent_url: None,
            api_url: "http://127.0.0.1:4".into(),
            web_url: None,
        };
        endpoints.write(&dir).unwrap();
        assert_eq!(Endpoints::of_running(&dir), Some(endpoints.clone()));
        endpoints.pid = i32::MAX as u32;
        endpoints.write(&dir).unwrap();
        assert_eq!(Endpoints::of_running(&dir), None);
        Endpoints::remove(&dir);
        assert_eq!(Endpoints::of_running(&dir), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn commands_name_the_data_dir_only_when_it_is_not_the_default() {
        assert_eq!(data_dir_flag(&default_data_dir()), "");
        assert_eq!(data_dir_flag(Path::new("/tmp/x")), " --data-dir /tmp/x");
    }
}
