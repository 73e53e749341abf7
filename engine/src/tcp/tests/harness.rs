//! Tests of the harness itself and of engine-wide properties.
