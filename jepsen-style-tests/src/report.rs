//! Run reports: a folder with the history (JSON lines), the nemesis timeline, every
//! checker's verdict, and a picture of latency over time with the fault windows shaded
//! (the way Jepsen's latency plots make failover visible).

use std::path::Path;

use serde::Serialize;

use crate::checker::Verdict;
use crate::history::{Call, Event, Kind};

/// A fault window on the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    pub fault: String,
    pub node: Option<u64>,
    pub start_ns: u64,
    pub end_ns: u64,
}

pub fn write(
    dir: &Path,
    events: &[Event],
    faults: &[Fault],
    verdicts: &[Verdict],
    calls: &[Call],
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut h = String::new();
    for e in events {
        h.push_str(&serde_json::to_string(e).unwrap_or_default());
        h.push('\n');
    }
    std::fs::write(dir.join("history.jsonl"), h)?;
    let mut n = String::new();
    for f in faults {
        n.push_str(&serde_json::to_string(f).unwrap_or_default());
        n.push('\n');
    }
    std::fs::write(dir.join("nemesis.jsonl"), n)?;
    std::fs::write(dir.join("verdicts.json"), serde_json::to_string_pretty(verdicts).unwrap_or_default())?;
    std::fs::write(dir.join("latency.svg"), svg(calls, faults))?;
    Ok(())
}

/// Latency (log scale) of every completed operation against time; green ok, red
/// fail, orange unknown; grey bands are faults.
pub fn svg(calls: &[Call], faults: &[Fault]) -> String {
    let (w, h, left, bottom) = (1000.0, 400.0, 60.0, 30.0);
    let end =
        calls.iter().filter_map(|c| c.complete_ns).chain(faults.iter().map(|f| f.end_ns)).max().unwrap_or(1).max(1)
            as f64;
    let x = |ns: u64| left + (ns as f64 / end) * (w - left - 10.0);
    // 0.1 ms .. 10 s on a log scale.
    let y = |ms: f64| {
        let v = ms.clamp(0.1, 10_000.0).log10(); // -1 ..= 4
        (h - bottom) - ((v + 1.0) / 5.0) * (h - bottom - 10.0)
    };
    let mut s = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='11'>\
         <rect width='100%' height='100%' fill='white'/>"
    );
    for f in faults {
        s.push_str(&format!(
            "<rect x='{:.1}' y='0' width='{:.1}' height='{:.1}' fill='#ccc' opacity='0.5'><title>{} {:?}</title></rect>",
            x(f.start_ns),
            (x(f.end_ns) - x(f.start_ns)).max(1.0),
            h - bottom,
            f.fault,
            f.node
        ));
    }
    for (ms, label) in [(1.0, "1 ms"), (10.0, "10 ms"), (100.0, "100 ms"), (1000.0, "1 s"), (10_000.0, "10 s")] {
        s.push_str(&format!(
            "<line x1='{left}' x2='{}' y1='{:.1}' y2='{:.1}' stroke='#eee'/><text x='4' y='{:.1}'>{label}</text>",
            w - 10.0,
            y(ms),
            y(ms),
            y(ms) + 4.0
        ));
    }
    for c in calls {
        let Some(done) = c.complete_ns else { continue };
        let color = match c.outcome {
            Kind::Ok => "#2a2",
            Kind::Fail => "#d22",
            _ => "#e90",
        };
        let ms = (done.saturating_sub(c.invoke_ns)) as f64 / 1e6;
        s.push_str(&format!("<circle cx='{:.1}' cy='{:.1}' r='1.6' fill='{color}'/>", x(c.invoke_ns), y(ms)));
    }
    s.push_str(&format!(
        "<text x='{left}' y='{}'>time →  (green ok, red fail, orange unknown; grey: faults)</text></svg>",
        h - 8.0
    ));
    s
}
