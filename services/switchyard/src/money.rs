//! Money as integer micro-dollars, and prices per million tokens.

use serde::{Deserialize, Deserializer, Serialize};

/// An amount in micro-dollars (1 USD = 1,000,000).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct MicroUsd(pub u64);

impl MicroUsd {
    /// As dollars, for display only.
    pub fn as_usd(self) -> f64 {
        self.0 as f64 / 1e6
    }
}

impl std::ops::Add for MicroUsd {
    type Output = MicroUsd;
    fn add(self, rhs: MicroUsd) -> MicroUsd {
        MicroUsd(self.0.saturating_add(rhs.0))
    }
}

impl std::iter::Sum for MicroUsd {
    fn sum<I: Iterator<Item = MicroUsd>>(iter: I) -> MicroUsd {
        iter.fold(MicroUsd(0), |a, b| a + b)
    }
}

impl std::fmt::Display for MicroUsd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "${}.{:06}", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

/// A price per million tokens, in micro-dollars. Written in config as US dollars per million
/// tokens (`0.15`), the way providers publish prices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct PerMTok(pub u64);

impl Serialize for PerMTok {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.as_usd())
    }
}

impl PerMTok {
    /// From US dollars per million tokens.
    pub fn from_usd(usd: f64) -> Option<Self> {
        (usd.is_finite() && usd >= 0.0).then(|| PerMTok((usd * 1e6).round() as u64))
    }

    /// US dollars per million tokens.
    pub fn as_usd(self) -> f64 {
        self.0 as f64 / 1e6
    }

    /// The cost of `tokens` tokens, rounded to the nearest micro-dollar.
    pub fn cost(self, tokens: u64) -> MicroUsd {
        let nano = u128::from(tokens) * u128::from(self.0);
        MicroUsd(((nano + 500_000) / 1_000_000) as u64)
    }
}

impl<'de> Deserialize<'de> for PerMTok {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let usd = f64::deserialize(d)?;
        PerMTok::from_usd(usd).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "price {usd} is not a non-negative number of US dollars per million tokens"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_exact_for_round_prices() {
        let p = PerMTok::from_usd(0.15).unwrap();
        assert_eq!(p, PerMTok(150_000));
        assert_eq!(p.cost(1_000_000), MicroUsd(150_000));
        assert_eq!(p.cost(500), MicroUsd(75));
        assert_eq!(PerMTok::from_usd(15.0).unwrap().cost(3), MicroUsd(45));
        // 0.6 µ$ rounds to 1.
        assert_eq!(PerMTok::from_usd(0.6).unwrap().cost(1), MicroUsd(1));
        assert_eq!(MicroUsd(1_234_567).to_string(), "$1.234567");
        assert!(PerMTok::from_usd(-1.0).is_none());
    }
}
