//! options tests.
use super::*;
