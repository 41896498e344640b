//! The web client's end-to-end encryption, compiled to WebAssembly (`wasm32-unknown-unknown`).
//!
//! The cryptography is `messaging`'s own device core, not a second implementation: the files
//! `lib/src/e2ee/{device,directory,envelope}.rs` and `lib/src/ids.rs` are compiled here as they
//! are (by path), so the browser seals and opens exactly what the Rust clients and agents do
//! (Olm for key material, Megolm for content, `vodozemac`). Only what they need of `messaging`
//! comes with them: its error type's shape ([`error`]). The I/O (`Keyring`'s HTTP calls and
//! frames) is the page's: `web/app/e2ee.js` does in JavaScript what `Keyring` does in Rust,
//! calling in here for every step that touches a key.
//!
//! The interface is one JSON call ([`call`]): `{"op": ..., ...}` in, `{"ok": ...}` or
//! `{"error": ...}` out, through the module's linear memory ([`alloc`], [`dealloc`],
//! [`call_json`]); [`ops`] lists the operations. One module instance holds one device.
//! Randomness comes from the page (`crypto.getRandomValues`, imported as `env.random_fill`).

/// The part of `messaging::error` the included files use: a refusal with its reason.
pub mod error {
    /// Why an input was refused.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Error(String);

    impl Error {
        /// An input that is not what it must be.
        pub fn invalid(message: impl Into<String>) -> Self {
            Self(message.into())
        }

        /// Its code: every error here is an invalid input.
        pub fn code(&self) -> ErrorCode {
            ErrorCode::InvalidRequest
        }
    }

    /// The codes of the included files' errors (`messaging::ErrorCode`'s one they use).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum ErrorCode {
        /// An input that is not what it must be.
        InvalidRequest,
    }

    impl std::fmt::Display for Error {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for Error {}

    /// A result whose error is an [`Error`].
    pub type Result<T> = std::result::Result<T, Error>;
}

pub use error::{Error, ErrorCode};

// What a user or device id may be: lib/src/ids.rs, documented there.
#[path = "../../../lib/src/ids.rs"]
pub mod ids;

pub mod e2ee;
pub mod ops;

pub use ops::call;

fn layout(len: usize) -> std::alloc::Layout {
    std::alloc::Layout::array::<u8>(len.max(1)).expect("a buffer below isize::MAX")
}

/// Memory for the page to write a request into (`len` bytes; freed by [`call_json`]).
#[unsafe(no_mangle)]
pub extern "C" fn alloc(len: usize) -> *mut u8 {
    // SAFETY: the layout is never zero-sized.
    unsafe { std::alloc::alloc(layout(len)) }
}

/// Frees an answer of [`call_json`] (or memory from [`alloc`] that was not passed to it).
///
/// # Safety
/// `pointer` and `len` are exactly what [`alloc`] took or [`call_json`] returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dealloc(pointer: *mut u8, len: usize) {
    // SAFETY: this module allocated `pointer` with this layout.
    unsafe { std::alloc::dealloc(pointer, layout(len)) }
}

/// Runs the JSON request of `len` bytes at `pointer` (which it frees) and returns its answer as
/// `pointer << 32 | len`, to be read and then freed with [`dealloc`].
///
/// # Safety
/// `pointer` and `len` come from [`alloc`] and hold the request.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn call_json(pointer: *mut u8, len: usize) -> u64 {
    // SAFETY: the page wrote `len` bytes into the buffer `alloc(len)` gave it.
    let request = unsafe { std::slice::from_raw_parts(pointer, len) }.to_vec();
    // SAFETY: as above; the request was copied out first.
    unsafe { dealloc(pointer, len) };
    let answer = call(&request);
    let out = alloc(answer.len());
    // SAFETY: `out` has room for the answer's bytes.
    unsafe { std::ptr::copy_nonoverlapping(answer.as_ptr(), out, answer.len()) };
    ((out as u64) << 32) | answer.len() as u64
}

#[cfg(target_arch = "wasm32")]
mod randomness {
    unsafe extern "C" {
        /// `crypto.getRandomValues` over `len` bytes at `pointer`, provided by the page.
        fn random_fill(pointer: *mut u8, len: usize);
    }

    /// getrandom's `custom` backend (selected in `.cargo/config.toml` for this target).
    ///
    /// # Safety
    /// getrandom passes a writable buffer of `len` bytes.
    #[unsafe(no_mangle)]
    unsafe extern "Rust" fn __getrandom_v03_custom(
        dest: *mut u8,
        len: usize,
    ) -> Result<(), getrandom::Error> {
        // SAFETY: the page fills exactly `len` bytes at `dest`.
        unsafe { random_fill(dest, len) };
        Ok(())
    }
}
