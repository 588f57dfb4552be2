//! Tests for the pricing issue (being written).
