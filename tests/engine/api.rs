//! Tests for the api issue (being written).
