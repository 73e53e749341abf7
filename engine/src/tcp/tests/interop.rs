//! interop tests.
use super::*;
