//! The command-line tools as a person uses them: one clear line on a mistake, never a
//! backtrace (even with RUST_BACKTRACE=1, as many developer shells set), never a token the
//! stack would refuse.

use std::process::Command;

fn missing_dir() -> String {
    std::env::temp_dir()
        .join(format!("no-stack-{}", uuid::Uuid::new_v4()))
        .display()
        .to_string()
}

#[test]
fn token_without_a_stack_key_fails_and_says_what_to_pass() {
    let dir = missing_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_local-stack"))
        .args(["token", "alice", "--data-dir", &dir])
        .env("RUST_BACKTRACE", "1")
        .env_remove("JWT_HS256_SECRET")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no token may be printed");
    assert!(stderr.contains("start the stack first"), "{stderr}");
    assert!(stderr.contains("--data-dir"), "{stderr}");
    assert!(
        !std::path::Path::new(&dir).exists(),
        "no key may be created"
    );
}

#[test]
fn chat_errors_are_one_line_even_with_backtraces_on() {
    let out = Command::new(env!("CARGO_BIN_EXE_chat"))
        .args([
            "--user",
            "alice",
            "--agent",
            "demo",
            "--data-dir",
            &missing_dir(),
        ])
        .env("RUST_BACKTRACE", "1")
        .env_remove("JWT_HS256_SECRET")
        .env_remove("CHAT_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("chat: "), "{stderr}");
    assert!(stderr.contains("start the stack first"), "{stderr}");
}

#[test]
fn chat_against_no_stack_says_so_in_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_chat"))
        .args([
            "--user",
            "alice",
            "--with",
            "bob",
            "--token",
            "a.b.c",
            "--api",
            "http://127.0.0.1:9",
        ])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("is the stack running"), "{stderr}");
}
