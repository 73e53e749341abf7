//! In-memory device. (in progress)
