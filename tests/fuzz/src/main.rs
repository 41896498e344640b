//! `fuzz`: drives every target (or the ones named) with mutated inputs; keeps any input that
//! panics under `target/fuzz-crashes/` and exits non-zero.
//!
//! ```text
//! cargo run --release -p fuzz -- --inputs 10000000          # the long run, every target
//! cargo run --release -p fuzz -- --inputs 100000 client-frame jwt
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use fuzz::{Mutator, TARGETS};

/// Fuzz every decoder of outside bytes.
#[derive(Parser, Debug)]
#[command(name = "fuzz")]
struct Args {
    /// Inputs per target.
    #[arg(long, default_value_t = 1_000_000)]
    inputs: u64,
    /// Seed of the mutator (the same seed gives the same inputs).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where inputs that panic are kept.
    #[arg(long, default_value = "target/fuzz-crashes")]
    crashes: PathBuf,
    /// Targets to run (default: all). `--list` shows them.
    targets: Vec<String>,
    /// List the targets and exit.
    #[arg(long)]
    list: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.list {
        for t in TARGETS {
            println!("{:<24} {}", t.name, t.about);
        }
        return ExitCode::SUCCESS;
    }
    // A panic is reported by us with its input, not printed by the hook for every one.
    std::panic::set_hook(Box::new(|_| {}));
    let mut failed = false;
    for target in TARGETS
        .iter()
        .filter(|t| args.targets.is_empty() || args.targets.iter().any(|n| n == t.name))
    {
        let seeds = (target.seeds)();
        let mut mutator = Mutator::new(args.seed);
        let started = Instant::now();
        let mut crashes = 0u64;
        for i in 0..args.inputs {
            let input = mutator.next(&seeds);
            if std::panic::catch_unwind(|| (target.run)(&input)).is_err() {
                crashes += 1;
                let _ = std::fs::create_dir_all(&args.crashes);
                let path = args
                    .crashes
                    .join(format!("{}-{}-{i}", target.name, args.seed));
                let _ = std::fs::write(&path, &input);
                eprintln!(
                    "fuzz: {} panicked on input {i}: kept in {}",
                    target.name,
                    path.display()
                );
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "fuzz: {:<24} {} inputs in {seconds:.1} s ({:.0}/s), {crashes} panics",
            target.name,
            args.inputs,
            args.inputs as f64 / seconds.max(1e-9)
        );
        failed |= crashes > 0;
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
