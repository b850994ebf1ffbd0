//! Marathon's placement constraints, evaluated against hosts.
//!
//! A constraint's field is a host label, except `hostname` (and `id`), which is the
//! host's id: every berth node is one host, even when several share a machine.

use std::collections::BTreeMap;

use regex::Regex;

use crate::state::apps::spec::Constraint;
use crate::state::nodes::NodeInfo;

/// A constraint with its regex compiled once per plan.
pub struct Compiled {
    c: Constraint,
    regex: Option<Regex>,
}

fn attribute(id: u64, info: &NodeInfo, field: &str) -> Option<String> {
    match field {
        "hostname" | "id" => Some(id.to_string()),
        _ => info.labels.get(field).cloned(),
    }
}

impl Compiled {
    pub fn new(c: &Constraint) -> Self {
        let regex = match c {
            Constraint::Like { regex, .. } | Constraint::Unlike { regex, .. } => {
                Regex::new(&format!("^(?:{regex})$")).ok()
            }
            _ => None,
        };
        Compiled { c: c.clone(), regex }
    }

    pub fn describe(&self) -> String {
        self.c.describe()
    }

    /// Whether host `id` may take one more instance, given the app's instances per
    /// host (`counts`) and every up host (`hosts`).
    pub fn allows(
        &self,
        id: u64,
        info: &NodeInfo,
        hosts: &BTreeMap<u64, &NodeInfo>,
        counts: &BTreeMap<u64, u32>,
    ) -> bool {
        // Instances of the app per value of `field`.
        let per_value = |field: &str| -> BTreeMap<String, u32> {
            let mut m = BTreeMap::new();
            for (h, n) in counts {
                if *n == 0 {
                    continue;
                }
                if let Some(v) = hosts.get(h).and_then(|i| attribute(*h, i, field)) {
                    *m.entry(v).or_default() += n;
                }
            }
            m
        };
        match &self.c {
            Constraint::Unique { field } => match attribute(id, info, field) {
                None => false,
                Some(v) => per_value(field).get(&v).copied().unwrap_or(0) == 0,
            },
            Constraint::Cluster { field, value } => match (attribute(id, info, field), value) {
                (None, _) => false,
                (Some(v), Some(want)) => &v == want,
                (Some(v), None) => {
                    let placed = per_value(field);
                    placed.is_empty() || placed.contains_key(&v)
                }
            },
            Constraint::Like { field, .. } => match (attribute(id, info, field), &self.regex) {
                (Some(v), Some(r)) => r.is_match(&v),
                _ => false,
            },
            Constraint::Unlike { field, .. } => match (attribute(id, info, field), &self.regex) {
                (Some(v), Some(r)) => !r.is_match(&v),
                (None, _) => true,
                (Some(_), None) => false,
            },
            Constraint::MaxPer { field, max } => match attribute(id, info, field) {
                None => false,
                Some(v) => per_value(field).get(&v).copied().unwrap_or(0) < *max,
            },
            Constraint::GroupBy { field, groups } => {
                let Some(v) = attribute(id, info, field) else {
                    return false;
                };
                let placed = per_value(field);
                let mut values: Vec<String> = hosts.iter().filter_map(|(h, i)| attribute(*h, i, field)).collect();
                values.sort();
                values.dedup();
                // With `groups` known, values not seen yet count as empty groups too.
                let known = values.len().max(groups.unwrap_or(0) as usize);
                let least = if placed.len() < known { 0 } else { placed.values().copied().min().unwrap_or(0) };
                placed.get(&v).copied().unwrap_or(0) <= least
            }
        }
    }
}
