//! Tests for the gateway issue (being written).
