//! llm-sim: a provider simulator that speaks the OpenAI chat-completions API.
//!
//! It stands in for paid providers in tests, demos and benchmarks: latency distributions,
//! per-key rate limits that answer 429 with Retry-After, server errors, timeouts, in-band
//! errors, malformed and schema-violating outputs, and a `/sim/stats` endpoint that reports
//! what it saw. Answers asked for with `response_format: json_schema` conform to the schema
//! and are deterministic for a given seed, model and conversation.

pub mod generate;
pub mod profile;
pub mod server;
pub mod stats;

pub use profile::{FaultRates, Profile};
pub use server::{SimServer, Simulator, spawn};
pub use stats::StatsSnapshot;

/// FNV-1a, 64 bit: a stable hash for seeding (std's hasher may change between releases).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_parts(&[bytes])
}

/// FNV-1a over several byte strings, each followed by a separator byte.
pub fn fnv1a_parts(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(std::iter::once(&0xffu8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}
