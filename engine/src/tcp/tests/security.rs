//! security tests.
use super::*;
