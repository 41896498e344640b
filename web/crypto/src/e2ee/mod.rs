//! The device core of `lib/src/e2ee/`, compiled here by path (see the crate doc).

#[path = "../../../../lib/src/e2ee/device.rs"]
pub mod device;
#[path = "../../../../lib/src/e2ee/directory.rs"]
pub mod directory;
#[path = "../../../../lib/src/e2ee/envelope.rs"]
pub mod envelope;

pub use device::CryptoDevice;
