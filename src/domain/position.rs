//! A point on Earth, WGS84, always longitude first (as GeoJSON and the R-tree have it).
//! One validation for every surface that accepts a position: GraphQL, the worker
//! protocol and the city actor.

use serde::{Deserialize, Serialize};

/// A valid position: finite, latitude within ±90, longitude within ±180.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub lon: f64,
    pub lat: f64,
}

/// Why a pair of numbers is not a position.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("({lat}, {lon}) is not a position: lat must be within ±90 and lon within ±180")]
pub struct InvalidPosition {
    pub lon: f64,
    pub lat: f64,
}

impl Position {
    pub fn new(lon: f64, lat: f64) -> Result<Position, InvalidPosition> {
        let valid = lon.is_finite()
            && lat.is_finite()
            && (-180.0..=180.0).contains(&lon)
            && (-90.0..=90.0).contains(&lat);
        if valid {
            Ok(Position { lon, lat })
        } else {
            Err(InvalidPosition { lon, lat })
        }
    }

    /// Rounded to three decimals (about 100 m): what a worker learns of a job's place
    /// before accepting it. The exact address comes with the accept answer.
    pub fn rounded_for_privacy(self) -> Position {
        let round = |x: f64| (x * 1000.0).round() / 1000.0;
        Position {
            lon: round(self.lon),
            lat: round(self.lat),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_finite_in_range_pairs_are_positions() {
        assert!(Position::new(-58.38, -34.6).is_ok());
        assert!(Position::new(180.0, 90.0).is_ok());
        for (lon, lat) in [
            (f64::NAN, 0.0),
            (0.0, f64::INFINITY),
            (180.1, 0.0),
            (0.0, -90.5),
        ] {
            assert!(Position::new(lon, lat).is_err(), "({lon}, {lat})");
        }
        let p = Position::new(-58.38164, -34.60371)
            .unwrap()
            .rounded_for_privacy();
        assert_eq!((p.lon, p.lat), (-58.382, -34.604));
    }
}
