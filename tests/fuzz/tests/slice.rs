//! The bounded slice CI runs on every change: every target, a fixed number of inputs from a
//! fixed seed, none may panic. The long run is `cargo run --release -p fuzz -- --inputs N`.

use fuzz::{Mutator, TARGETS};

/// Inputs per target in CI.
const INPUTS: u64 = 20_000;

#[test]
fn no_target_panics_on_a_slice_of_inputs() {
    for target in TARGETS {
        let seeds = (target.seeds)();
        let mut mutator = Mutator::new(7);
        for i in 0..INPUTS {
            let input = mutator.next(&seeds);
            let outcome = std::panic::catch_unwind(|| (target.run)(&input));
            assert!(
                outcome.is_ok(),
                "{} panicked on input {i}: {:?}",
                target.name,
                String::from_utf8_lossy(&input)
            );
        }
    }
}

#[test]
fn every_seed_is_accepted_where_it_should_be() {
    // The seeds are valid inputs: the targets parse them (a target whose seeds are all
    // refused would fuzz nothing but the first byte).
    for frame in (TARGETS[0].seeds)() {
        messaging::protocol::parse_client_frame(&frame.to_string())
            .unwrap_or_else(|e| panic!("seed {frame} refused: {e:?}"));
    }
}
