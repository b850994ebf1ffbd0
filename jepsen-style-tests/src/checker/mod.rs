//! Checkers: one invariant each, over a paired history. Each returns a [`Verdict`]
//! with the first anomaly and a minimal excerpt of the history around it.

pub mod converge;
pub mod ipam;
pub mod linearizable;
pub mod set;

use serde::Serialize;

/// What a checker concluded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub checker: &'static str,
    pub valid: bool,
    /// How many operations were checked.
    pub checked: usize,
    /// The first anomaly, in words.
    pub anomaly: Option<String>,
    /// The operations that show it.
    pub excerpt: Vec<String>,
}

impl Verdict {
    pub fn ok(checker: &'static str, checked: usize) -> Self {
        Verdict { checker, valid: true, checked, anomaly: None, excerpt: Vec::new() }
    }

    pub fn bad(checker: &'static str, checked: usize, anomaly: String, excerpt: Vec<String>) -> Self {
        Verdict { checker, valid: false, checked, anomaly: Some(anomaly), excerpt }
    }
}
