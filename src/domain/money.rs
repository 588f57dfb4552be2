//! Money and ratios as integers. Amounts are centavos (`Cents`); multipliers and percentages
//! are parts per million (`Ratio`), parsed from their decimal text without floating point.
//!
//! Rounding rule: every multiplication rounds half away from zero to the centavo, once per
//! step, in the documented order (see `pricing::rules`). The platform fee is rounded and
//! the worker's net is the remainder, so `total = worker_net + platform_fee` exactly.

use serde::{Deserialize, Serialize};

/// An amount of money in centavos (1/100 of the currency unit).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Cents(pub i64);

impl Cents {
    pub const ZERO: Cents = Cents(0);

    /// `self × ratio`, rounded half away from zero; saturates instead of overflowing.
    pub fn times(self, ratio: Ratio) -> Cents {
        Cents(mul_div_round(
            self.0 as i128,
            ratio.0 as i128,
            Ratio::ONE.0 as i128,
        ))
    }

    pub fn checked_sub(self, other: Cents) -> Option<Cents> {
        self.0.checked_sub(other.0).map(Cents)
    }
}

impl std::ops::Add for Cents {
    type Output = Cents;
    fn add(self, rhs: Cents) -> Cents {
        Cents(self.0.saturating_add(rhs.0))
    }
}

impl std::fmt::Display for Cents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        write!(
            f,
            "{sign}{}.{:02}",
            (self.0 / 100).abs(),
            (self.0 % 100).abs()
        )
    }
}

/// A non-negative ratio in parts per million: `Ratio(1_000_000)` is 1.0, `Ratio(150_000)` 15 %.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ratio(pub i64);

impl Ratio {
    pub const ONE: Ratio = Ratio(1_000_000);
    pub const ZERO: Ratio = Ratio(0);

    /// Parses a decimal such as `0.15`, `1.250` or `2` exactly (up to six decimals).
    pub fn parse(text: &str) -> Result<Ratio, RatioError> {
        let text = text.trim();
        let bad = || RatioError(text.to_string());
        let (int, frac) = text.split_once('.').unwrap_or((text, ""));
        if int.is_empty() && frac.is_empty() {
            return Err(bad());
        }
        if !int.chars().all(|c| c.is_ascii_digit())
            || !frac.chars().all(|c| c.is_ascii_digit())
            || frac.len() > 6
        {
            return Err(bad());
        }
        let int: i64 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| bad())?
        };
        let frac_ppm: i64 = if frac.is_empty() {
            0
        } else {
            format!("{frac:0<6}").parse().map_err(|_| bad())?
        };
        int.checked_mul(1_000_000)
            .and_then(|v| v.checked_add(frac_ppm))
            .map(Ratio)
            .ok_or_else(bad)
    }

    /// `self × other`, rounded to the nearest part per million.
    pub fn times(self, other: Ratio) -> Ratio {
        Ratio(mul_div_round(self.0 as i128, other.0 as i128, 1_000_000))
    }

    pub fn clamp(self, min: Ratio, max: Ratio) -> Ratio {
        Ratio(self.0.clamp(min.0, max.0.max(min.0)))
    }
}

impl std::fmt::Display for Ratio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let frac = format!("{:06}", self.0 % 1_000_000);
        let frac = frac.trim_end_matches('0');
        if frac.is_empty() {
            write!(f, "{}", self.0 / 1_000_000)
        } else {
            write!(f, "{}.{}", self.0 / 1_000_000, frac)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a non-negative decimal with at most six decimals")]
pub struct RatioError(pub String);

/// `a × b ÷ d`, rounded half away from zero, saturated to the i64 range.
fn mul_div_round(a: i128, b: i128, d: i128) -> i64 {
    let product = a * b;
    let half = d / 2;
    let q = if product >= 0 {
        (product + half) / d
    } else {
        (product - half) / d
    };
    q.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ratios_parse_exactly() {
        assert_eq!(Ratio::parse("0.15"), Ok(Ratio(150_000)));
        assert_eq!(Ratio::parse("1.250"), Ok(Ratio(1_250_000)));
        assert_eq!(Ratio::parse("2"), Ok(Ratio(2_000_000)));
        assert_eq!(Ratio::parse(".5"), Ok(Ratio(500_000)));
        for bad in ["", ".", "-0.1", "1.2.3", "0.1234567", "abc", "1e3"] {
            assert!(Ratio::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Ratio(1_250_000).to_string(), "1.25");
        assert_eq!(Ratio(2_000_000).to_string(), "2");
    }

    #[test]
    fn multiplication_rounds_half_away_from_zero() {
        assert_eq!(Cents(1001).times(Ratio::parse("0.5").unwrap()), Cents(501));
        assert_eq!(Cents(1000).times(Ratio::parse("0.15").unwrap()), Cents(150));
        assert_eq!(Cents(3).times(Ratio::parse("0.5").unwrap()), Cents(2));
        assert_eq!(Cents(i64::MAX).times(Ratio(2_000_000)), Cents(i64::MAX));
        assert_eq!(Cents(123456).to_string(), "1234.56");
    }

    proptest! {
        #[test]
        fn a_fee_and_its_remainder_always_add_up(total in 0i64..10_000_000_000, ppm in 0i64..=1_000_000) {
            let fee = Cents(total).times(Ratio(ppm));
            let net = Cents(total).checked_sub(fee).unwrap();
            prop_assert!(fee.0 >= 0 && net.0 >= 0);
            prop_assert_eq!(net.0 + fee.0, total);
        }
    }
}
