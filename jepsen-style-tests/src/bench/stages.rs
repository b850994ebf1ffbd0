//! `ipam --stages`: where one allocation's time goes at one client, step by step across
//! the client, the leader and the faster follower, from the marks every process of
//! the run recorded (`berth_raft::stages`, turned on by `BERTH_STAGES`).
//!
//! One allocation is one client cycle (the client's send to its answer). Within it the
//! path is followed mark by mark: the leader's HTTP layer, its log append, the frame
//! to a follower, that follower's read, append, durable write and reply, the leader's
//! read of the reply, its apply, its HTTP answer. The follower followed is the one
//! whose reply was written first (the one the commit waited for). A cycle missing a
//! step (a heartbeat in between, an append that went through the writer) is left out
//! and counted.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use berth_raft::stages::Step;
use serde_json::{json, Value};

/// Marks by process id, each in time order.
pub type Marks = BTreeMap<u32, Vec<(Step, u64)>>;

/// Reads every `<pid>.stages` file in `dir`, keeping the marks in `[from, to]` (ns).
pub fn read(dir: &Path, from: u64, to: u64) -> Result<Marks> {
    let mut marks = Marks::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        let Some(pid) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".stages"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let text = std::fs::read_to_string(&path)?;
        let mut v = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let mut it = line.split_whitespace();
            let (Some(step), Some(ns), None) = (it.next(), it.next(), it.next()) else {
                bail!("{}:{}: not `step nanoseconds`: {line:?}", path.display(), i + 1);
            };
            let step = step.parse::<u8>().ok().and_then(Step::from_u8);
            let Some(step) = step else { bail!("{}:{}: no such step in {line:?}", path.display(), i + 1) };
            let ns: u64 = ns.parse().with_context(|| format!("{}:{}: {line:?}", path.display(), i + 1))?;
            if (from..=to).contains(&ns) {
                v.push((step, ns));
            }
        }
        v.sort_by_key(|(_, ns)| *ns);
        marks.insert(pid, v);
    }
    Ok(marks)
}

/// The rows of the breakdown, in path order.
pub const ROWS: [&str; 12] = [
    "client sends → leader's HTTP layer has the request",
    "leader: HTTP layer → log append",
    "leader: append → first frame to a follower sent",
    "frame sent → the follower reads it",
    "follower: frame read → log append",
    "follower: append → durable",
    "follower: durable → reply sent",
    "reply sent → the leader reads it",
    "leader: reply read → apply",
    "leader: apply → HTTP layer answers",
    "leader answers → the client has the answer",
    "total (client send → answer)",
];

/// The per-step latencies (µs) of every complete cycle, and how many cycles were left
/// out.
#[derive(Debug)]
pub struct Breakdown {
    pub steps: Vec<Vec<f64>>,
    pub incomplete: usize,
    /// Every cycle's whole time (µs), complete or not, with whether it was complete:
    /// what the client saw, tail included.
    pub cycles: Vec<(f64, bool)>,
    /// The first step each incomplete cycle was found without, and how often.
    pub missing_by: BTreeMap<&'static str, usize>,
}

fn first(v: &[(Step, u64)], step: Step, after: u64, until: u64) -> Option<u64> {
    let start = v.partition_point(|(_, t)| *t < after);
    v[start..].iter().take_while(|(_, t)| *t <= until).find(|(s, _)| *s == step).map(|(_, t)| *t)
}

fn last(v: &[(Step, u64)], step: Step, after: u64, until: u64) -> Option<u64> {
    let end = v.partition_point(|(_, t)| *t <= until);
    v[..end].iter().rev().take_while(|(_, t)| *t >= after).find(|(s, _)| *s == step).map(|(_, t)| *t)
}

fn count(v: &[(Step, u64)], step: Step) -> usize {
    v.iter().filter(|(s, _)| *s == step).count()
}

/// Follows each of `client`'s cycles through the others' marks: the leader is the
/// process with the most `HttpIn` marks, the followers those that read frames.
pub fn breakdown(marks: &Marks, client: u32) -> Result<Breakdown> {
    let c = marks.get(&client).context("no marks from the client")?;
    let others = || marks.iter().filter(|(pid, _)| **pid != client);
    let (leader, l) = others()
        .max_by_key(|(_, v)| count(v, Step::HttpIn))
        .filter(|(_, v)| count(v, Step::HttpIn) > 0)
        .context("no node's HTTP layer saw a request")?;
    let followers: Vec<&Vec<(Step, u64)>> =
        others().filter(|(pid, v)| *pid != leader && count(v, Step::FrameIn) > 0).map(|(_, v)| v).collect();
    if followers.is_empty() {
        bail!("no follower read a frame");
    }
    let mut steps = vec![Vec::new(); ROWS.len()];
    let mut incomplete = 0;
    let mut cycles = Vec::new();
    let mut missing_by: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut sends = c.iter().filter(|(s, _)| *s == Step::ClientSend).map(|(_, t)| *t).peekable();
    while let Some(s) = sends.next() {
        let next = sends.peek().copied().unwrap_or(u64::MAX);
        let Some(d) = first(c, Step::ClientDone, s, next) else {
            incomplete += 1;
            *missing_by.entry("client ClientDone").or_default() += 1;
            continue;
        };
        let whole = d.saturating_sub(s) as f64 / 1000.0;
        let path = (|| {
            let http_in = first(l, Step::HttpIn, s, d).ok_or("leader HttpIn")?;
            let append = first(l, Step::Append, http_in, d).ok_or("leader Append")?;
            let out = first(l, Step::FrameOut, append, d).ok_or("leader FrameOut")?;
            // The follower whose reply came first.
            let (reply, frame_in, f_append, durable) = followers
                .iter()
                .filter_map(|f| {
                    let frame_in = first(f, Step::FrameIn, out, d)?;
                    let f_append = first(f, Step::FollowerAppend, frame_in, d)?;
                    let durable = first(f, Step::Durable, f_append, d)?;
                    let reply = first(f, Step::ReplyOut, durable, d)?;
                    Some((reply, frame_in, f_append, durable))
                })
                .min()
                .ok_or("a follower's FrameIn, FollowerAppend, Durable or ReplyOut")?;
            // The frame that follower read: the leader's last one written before it.
            let sent = last(l, Step::FrameOut, append, frame_in).ok_or("leader FrameOut")?;
            let reply_in = first(l, Step::ReplyIn, reply, d).ok_or("leader ReplyIn")?;
            let apply = first(l, Step::Apply, reply_in, d).ok_or("leader Apply")?;
            let http_out = first(l, Step::HttpOut, apply, d).ok_or("leader HttpOut")?;
            Ok::<_, &'static str>([
                (s, http_in),
                (http_in, append),
                (append, out),
                (sent, frame_in),
                (frame_in, f_append),
                (f_append, durable),
                (durable, reply),
                (reply, reply_in),
                (reply_in, apply),
                (apply, http_out),
                (http_out, d),
                (s, d),
            ])
        })();
        match path {
            Ok(spans) => {
                cycles.push((whole, true));
                for (row, (a, b)) in spans.iter().enumerate() {
                    steps[row].push(b.saturating_sub(*a) as f64 / 1000.0);
                }
            }
            Err(missing) => {
                cycles.push((whole, false));
                incomplete += 1;
                *missing_by.entry(missing).or_default() += 1;
            }
        }
    }
    if steps[0].is_empty() {
        bail!("no allocation could be followed through the marks ({incomplete} cycles incomplete)");
    }
    Ok(Breakdown { steps, incomplete, cycles, missing_by })
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

impl Breakdown {
    /// The breakdown as JSON: per step its p50, mean and p90 in µs, and its mean over
    /// the slowest tenth of the complete cycles (where the tail's time goes); beside
    /// it every cycle the client saw, complete or not (the mean the throughput is).
    pub fn to_json(&self) -> Value {
        let total = self.steps.last().expect("rows");
        let mut by_total: Vec<usize> = (0..total.len()).collect();
        by_total.sort_by(|a, b| total[*b].total_cmp(&total[*a]));
        let slowest = &by_total[..total.len().div_ceil(10)];
        let rows: Vec<Value> = ROWS
            .iter()
            .zip(&self.steps)
            .map(|(name, v)| {
                let mut sorted = v.clone();
                sorted.sort_by(f64::total_cmp);
                let slow = slowest.iter().map(|i| v[*i]).sum::<f64>() / slowest.len() as f64;
                json!({
                    "step": name,
                    "p50_us": super::round(quantile(&sorted, 0.5), 1),
                    "mean_us": super::round(mean(&sorted), 1),
                    "p90_us": super::round(quantile(&sorted, 0.9), 1),
                    "slowest_tenth_mean_us": super::round(slow, 1),
                })
            })
            .collect();
        let mut all: Vec<f64> = self.cycles.iter().map(|(t, _)| *t).collect();
        all.sort_by(f64::total_cmp);
        let left_out: Vec<f64> = self.cycles.iter().filter(|(_, complete)| !complete).map(|(t, _)| *t).collect();
        let client = json!({
            "cycles": all.len(),
            "p50_us": super::round(quantile(&all, 0.5), 1),
            "mean_us": super::round(mean(&all), 1),
            "p90_us": super::round(quantile(&all, 0.9), 1),
            "p99_us": super::round(quantile(&all, 0.99), 1),
            "incomplete_mean_us": if left_out.is_empty() { Value::Null } else { super::round(mean(&left_out), 1).into() },
        });
        json!({"cycles": self.steps[0].len(), "incomplete": self.incomplete, "missing": self.missing_by, "steps": rows,
               "client": client})
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: u32 = 10;

    /// Two allocations with known steps (µs from the cycle's start), a heartbeat frame
    /// between them, a slower second follower, and a third cycle cut short.
    fn marks() -> Marks {
        let us = |base: u64, t: u64| (base + t) * 1000;
        let mut m = Marks::new();
        let (mut c, mut l, mut f1, mut f2) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for base in [1_000, 2_000] {
            c.push((Step::ClientSend, us(base, 0)));
            l.push((Step::HttpIn, us(base, 50)));
            l.push((Step::Append, us(base, 60)));
            l.push((Step::FrameOut, us(base, 90)));
            l.push((Step::FrameOut, us(base, 100)));
            // Follower 2 reads the second frame and replies first.
            f2.push((Step::FrameIn, us(base, 130)));
            f2.push((Step::FollowerAppend, us(base, 140)));
            f2.push((Step::Durable, us(base, 300)));
            f2.push((Step::ReplyOut, us(base, 330)));
            f1.push((Step::FrameIn, us(base, 120)));
            f1.push((Step::FollowerAppend, us(base, 135)));
            f1.push((Step::Durable, us(base, 400)));
            f1.push((Step::ReplyOut, us(base, 420)));
            l.push((Step::ReplyIn, us(base, 350)));
            l.push((Step::Apply, us(base, 370)));
            l.push((Step::ReplyIn, us(base, 440)));
            l.push((Step::HttpOut, us(base, 400)));
            c.push((Step::ClientDone, us(base, 460)));
            // A heartbeat after the answer.
            l.push((Step::FrameOut, us(base, 600)));
            f1.push((Step::FrameIn, us(base, 620)));
        }
        c.push((Step::ClientSend, us(3_000, 0)));
        for v in [&mut c, &mut l, &mut f1, &mut f2] {
            v.sort_by_key(|(_, t)| *t);
        }
        m.insert(CLIENT, c);
        m.insert(1, l);
        m.insert(2, f1);
        m.insert(3, f2);
        m
    }

    #[test]
    fn each_allocation_is_followed_through_the_faster_follower() {
        let b = breakdown(&marks(), CLIENT).unwrap();
        assert_eq!(b.incomplete, 1, "the cycle without an answer");
        assert_eq!(b.missing_by.get("client ClientDone"), Some(&1));
        let want = [50.0, 10.0, 30.0, 30.0, 10.0, 160.0, 30.0, 20.0, 20.0, 30.0, 60.0, 460.0];
        for (row, w) in want.iter().enumerate() {
            assert_eq!(b.steps[row], vec![*w, *w], "{}", ROWS[row]);
        }
        let j = b.to_json();
        assert_eq!(j["cycles"], 2);
        assert_eq!(j["steps"][5]["p50_us"], 160.0);
        assert_eq!(j["steps"][5]["slowest_tenth_mean_us"], 160.0);
        assert_eq!(j["client"]["cycles"], 2, "the cycle without an answer has no time");
        assert_eq!(j["client"]["p99_us"], 460.0);
        assert_eq!(j["client"]["incomplete_mean_us"], Value::Null);
    }

    #[test]
    fn a_cycle_left_out_of_the_steps_still_counts_in_what_the_client_saw() {
        let mut m = marks();
        // Answered, but the leader marked nothing for it (a forwarded write, say).
        let c = m.get_mut(&CLIENT).unwrap();
        c.retain(|(s, t)| !(*s == Step::ClientSend && *t == 3_000_000));
        c.extend([(Step::ClientSend, 4_000_000), (Step::ClientDone, 4_900_000)]);
        let b = breakdown(&m, CLIENT).unwrap();
        assert_eq!((b.steps[0].len(), b.incomplete), (2, 1));
        assert_eq!(b.missing_by.get("leader HttpIn"), Some(&1));
        let j = b.to_json();
        assert_eq!(j["client"]["cycles"], 3);
        assert_eq!(j["client"]["incomplete_mean_us"], 900.0);
        assert_eq!(j["client"]["p50_us"], 460.0);
        assert_eq!(j["client"]["p99_us"], 900.0);
        assert_eq!(j["client"]["mean_us"], 606.7);
        assert_eq!(j["steps"][11]["slowest_tenth_mean_us"], 460.0, "the steps cover complete cycles only");
    }

    #[test]
    fn marks_are_read_back_within_the_window_and_bad_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("7.stages"), "0 100\n11 300\n0 900\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let m = read(dir.path(), 50, 500).unwrap();
        assert_eq!(m[&7], vec![(Step::ClientSend, 100), (Step::ClientDone, 300)]);
        std::fs::write(dir.path().join("8.stages"), "99 5\n").unwrap();
        let e = read(dir.path(), 0, 10).unwrap_err().to_string();
        assert!(e.contains("8.stages:1") && e.contains("no such step"), "{e}");
    }

    #[test]
    fn without_a_leader_or_a_follower_it_says_which() {
        let mut m = Marks::new();
        m.insert(CLIENT, vec![(Step::ClientSend, 1), (Step::ClientDone, 2)]);
        assert!(breakdown(&m, CLIENT).unwrap_err().to_string().contains("HTTP layer"));
        m.insert(1, vec![(Step::HttpIn, 1)]);
        assert!(breakdown(&m, CLIENT).unwrap_err().to_string().contains("follower"));
    }
}
