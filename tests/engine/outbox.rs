//! Tests for the outbox issue (being written).
