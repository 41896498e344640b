//! Inputs: valid seeds, mutated structurally (as JSON) and at the byte level.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// Values that have broken parsers before, or would.
fn nasty_value(rng: &mut StdRng) -> Value {
    match rng.random_range(0..22) {
        0 => json!(u64::MAX),
        1 => json!(i64::MIN),
        2 => json!(-1),
        3 => json!(1u64 << 63),
        4 => json!(1.5e308),
        5 => json!(-0.0),
        6 => json!(""),
        7 => json!("\u{0}\u{1f}\u{7f}"),
        8 => json!("ḿęśşàğé 🦀 \u{202e}"),
        9 => json!({"$gt": ""}),
        10 => json!({"$where": "sleep(1000)"}),
        11 => json!("$disconnect"),
        12 => json!("$connect"),
        13 => json!(null),
        14 => json!(true),
        15 => json!([]),
        16 => json!({}),
        17 => json!("a.b.c"),
        18 => {
            let mut v = json!(1);
            for _ in 0..rng.random_range(1..300) {
                v = json!([v]);
            }
            v
        }
        19 => json!("x".repeat(rng.random_range(0..140_000))),
        20 => json!(rng.random::<i64>()),
        _ => json!(format!("{:x}", rng.random::<u128>())),
    }
}

/// Seeds plus mutations, reproducible from a seed.
pub struct Mutator {
    rng: StdRng,
}

impl Mutator {
    /// A mutator whose inputs follow from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The next input for a target with these `seeds`.
    pub fn next(&mut self, seeds: &[Value]) -> Vec<u8> {
        let rng = &mut self.rng;
        match rng.random_range(0..10) {
            // Pure noise, now and then.
            0 => (0..rng.random_range(0..64)).map(|_| rng.random()).collect(),
            // Bytes of a seed, damaged.
            1 | 2 => {
                let seed = &seeds[rng.random_range(0..seeds.len())];
                let mut bytes = seed.to_string().into_bytes();
                for _ in 0..rng.random_range(1..8) {
                    if bytes.is_empty() {
                        break;
                    }
                    let at = rng.random_range(0..bytes.len());
                    match rng.random_range(0..4) {
                        0 => bytes[at] ^= 1 << rng.random_range(0..8),
                        1 => bytes.truncate(at),
                        2 => bytes.insert(at, rng.random()),
                        _ => {
                            bytes.remove(at);
                        }
                    }
                }
                bytes
            }
            // A seed, changed as JSON.
            _ => {
                let mut value = seeds[rng.random_range(0..seeds.len())].clone();
                for _ in 0..rng.random_range(1..5) {
                    mutate(rng, &mut value, 0);
                }
                value.to_string().into_bytes()
            }
        }
    }
}

fn mutate(rng: &mut StdRng, value: &mut Value, depth: usize) {
    match value {
        Value::Object(map) if !map.is_empty() && depth < 6 => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let key = &keys[rng.random_range(0..keys.len())];
            match rng.random_range(0..5) {
                0 => {
                    map.remove(key);
                }
                1 => {
                    map.insert(format!("extra_{}", rng.random::<u8>()), nasty_value(rng));
                }
                2 => {
                    map.insert(key.clone(), nasty_value(rng));
                }
                _ => {
                    if let Some(inner) = map.get_mut(key) {
                        mutate(rng, inner, depth + 1);
                    }
                }
            }
        }
        Value::Array(items) if !items.is_empty() && depth < 6 => {
            let at = rng.random_range(0..items.len());
            match rng.random_range(0..3) {
                0 => items[at] = nasty_value(rng),
                1 => items.push(nasty_value(rng)),
                _ => mutate(rng, &mut items[at], depth + 1),
            }
        }
        _ => *value = nasty_value(rng),
    }
}
