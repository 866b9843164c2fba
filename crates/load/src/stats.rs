//! What a run measured: latency histograms per step, errors by code, and a
//! per-second timeline for the plot. One mutex; a few thousand records a
//! second do not contend on it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Something a virtual user does that has a latency and an outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Step {
    SignUp,
    Login,
    CreateProduct,
    CreateSession,
    AddItem,
    PlaceOrder,
    /// Until the stream's first message (the order as it is now).
    WatchOrder,
    /// From sending PlaceOrder to receiving CONFIRMED on WatchOrder.
    PlaceToConfirmed,
    /// One whole iteration: session, items, order, confirmation.
    Flow,
    WhoAmI,
}

impl Step {
    /// The RPCs a flow makes: the ones the per-RPC goal is about.
    pub const FLOW_RPCS: [Step; 4] = [
        Step::CreateSession,
        Step::AddItem,
        Step::PlaceOrder,
        Step::WatchOrder,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::SignUp => "SignUp",
            Step::Login => "Login",
            Step::CreateProduct => "CreateProduct",
            Step::CreateSession => "CreateSession",
            Step::AddItem => "AddItem",
            Step::PlaceOrder => "PlaceOrder",
            Step::WatchOrder => "WatchOrder",
            Step::PlaceToConfirmed => "PlaceToConfirmed",
            Step::Flow => "Flow",
            Step::WhoAmI => "WhoAmI",
        }
    }
}

/// Microseconds, 1 µs to 10 min, 3 significant digits.
fn histogram(digits: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, digits).expect("constant bounds are valid")
}

/// Distinct error messages kept per step, for the report.
const ERROR_SAMPLES: usize = 5;

#[derive(Default)]
struct StepRecord {
    latency: Option<Histogram<u64>>,
    errors: BTreeMap<String, u64>,
    samples: Vec<String>,
}

struct Second {
    flows_ok: u64,
    errors: u64,
    latency: BTreeMap<Step, Histogram<u64>>,
}

struct Inner {
    steps: BTreeMap<Step, StepRecord>,
    timeline: Vec<Second>,
    flows_ok: u64,
    flows_failed: u64,
}

pub struct Recorder {
    started: Instant,
    timeline: bool,
    inner: Mutex<Inner>,
}

/// Bounds the timeline of a run that goes on for hours.
const MAX_SECONDS: usize = 24 * 3600;

impl Recorder {
    /// `timeline`: keep per-second figures (the run; setup does not).
    pub fn new(timeline: bool) -> Recorder {
        Recorder {
            started: Instant::now(),
            timeline,
            inner: Mutex::new(Inner {
                steps: BTreeMap::new(),
                timeline: Vec::new(),
                flows_ok: 0,
                flows_failed: 0,
            }),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn second(&self, inner: &mut Inner) -> Option<usize> {
        if !self.timeline {
            return None;
        }
        let second = (self.started.elapsed().as_secs() as usize).min(MAX_SECONDS);
        while inner.timeline.len() <= second {
            inner.timeline.push(Second {
                flows_ok: 0,
                errors: 0,
                latency: BTreeMap::new(),
            });
        }
        Some(second)
    }

    pub fn ok(&self, step: Step, latency: Duration) {
        let micros = (latency.as_micros() as u64).max(1);
        let mut inner = self.inner.lock().unwrap();
        inner
            .steps
            .entry(step)
            .or_default()
            .latency
            .get_or_insert_with(|| histogram(3))
            .saturating_record(micros);
        if let Some(second) = self.second(&mut inner) {
            inner.timeline[second]
                .latency
                .entry(step)
                .or_insert_with(|| histogram(2))
                .saturating_record(micros);
        }
    }

    /// `kind` is the gRPC code's name or what was wrong with an answer.
    pub fn error(&self, step: Step, kind: &str, message: &str) {
        let mut inner = self.inner.lock().unwrap();
        let record = inner.steps.entry(step).or_default();
        *record.errors.entry(kind.to_owned()).or_default() += 1;
        if record.samples.len() < ERROR_SAMPLES {
            let sample = format!("{kind}: {}", truncate(message, 200));
            if !record.samples.contains(&sample) {
                record.samples.push(sample);
            }
        }
        if let Some(second) = self.second(&mut inner) {
            inner.timeline[second].errors += 1;
        }
    }

    pub fn flow_done(&self, ok: bool) {
        let mut inner = self.inner.lock().unwrap();
        if ok {
            inner.flows_ok += 1;
            if let Some(second) = self.second(&mut inner) {
                inner.timeline[second].flows_ok += 1;
            }
        } else {
            inner.flows_failed += 1;
        }
    }

    pub fn progress(&self) -> Progress {
        let inner = self.inner.lock().unwrap();
        let errors = inner
            .steps
            .values()
            .map(|r| r.errors.values().sum::<u64>())
            .sum();
        let last = inner
            .timeline
            .len()
            .checked_sub(2)
            .map(|i| &inner.timeline[i]);
        Progress {
            flows_ok: inner.flows_ok,
            flows_failed: inner.flows_failed,
            errors,
            last_second_flows: last.map_or(0, |s| s.flows_ok),
            last_second_confirm_p95: last
                .and_then(|s| s.latency.get(&Step::PlaceToConfirmed))
                .map(|h| ms(h.value_at_quantile(0.95))),
        }
    }

    pub fn summary(&self) -> Summary {
        let inner = self.inner.lock().unwrap();
        let steps = inner
            .steps
            .iter()
            .map(|(step, record)| {
                let latency = record.latency.as_ref();
                let at = |q: f64| latency.map_or(0.0, |h| ms(h.value_at_quantile(q)));
                (
                    step.name().to_owned(),
                    StepSummary {
                        ok: latency.map_or(0, |h| h.len()),
                        errors: record.errors.clone(),
                        error_samples: record.samples.clone(),
                        p50_ms: at(0.50),
                        p95_ms: at(0.95),
                        p99_ms: at(0.99),
                        max_ms: latency.map_or(0.0, |h| ms(h.max())),
                        mean_ms: latency.map_or(0.0, |h| h.mean() / 1000.0),
                    },
                )
            })
            .collect();
        let timeline = inner
            .timeline
            .iter()
            .enumerate()
            .map(|(second, s)| SecondSummary {
                second: second as u64,
                flows_ok: s.flows_ok,
                errors: s.errors,
                p50_ms: s
                    .latency
                    .iter()
                    .map(|(k, h)| (k.name().to_owned(), ms(h.value_at_quantile(0.50))))
                    .collect(),
                p95_ms: s
                    .latency
                    .iter()
                    .map(|(k, h)| (k.name().to_owned(), ms(h.value_at_quantile(0.95))))
                    .collect(),
                p99_ms: s
                    .latency
                    .iter()
                    .map(|(k, h)| (k.name().to_owned(), ms(h.value_at_quantile(0.99))))
                    .collect(),
            })
            .collect();
        Summary {
            flows_ok: inner.flows_ok,
            flows_failed: inner.flows_failed,
            steps,
            timeline,
        }
    }
}

fn ms(micros: u64) -> f64 {
    (micros as f64 / 1000.0 * 100.0).round() / 100.0
}

pub(crate) fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

pub struct Progress {
    pub flows_ok: u64,
    pub flows_failed: u64,
    pub errors: u64,
    pub last_second_flows: u64,
    pub last_second_confirm_p95: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepSummary {
    pub ok: u64,
    /// By gRPC code name, or what was wrong with an answer.
    pub errors: BTreeMap<String, u64>,
    pub error_samples: Vec<String>,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl StepSummary {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SecondSummary {
    pub second: u64,
    pub flows_ok: u64,
    pub errors: u64,
    pub p50_ms: BTreeMap<String, f64>,
    pub p95_ms: BTreeMap<String, f64>,
    pub p99_ms: BTreeMap<String, f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub flows_ok: u64,
    pub flows_failed: u64,
    pub steps: BTreeMap<String, StepSummary>,
    pub timeline: Vec<SecondSummary>,
}

impl Summary {
    pub fn errors(&self) -> u64 {
        self.steps.values().map(StepSummary::error_count).sum()
    }

    pub fn step(&self, step: Step) -> Option<&StepSummary> {
        self.steps.get(step.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_latency_errors_and_flows() {
        let recorder = Recorder::new(true);
        for millis in 1..=100 {
            recorder.ok(Step::PlaceOrder, Duration::from_millis(millis));
        }
        recorder.error(Step::PlaceOrder, "UNAVAILABLE", "down");
        recorder.error(Step::PlaceOrder, "UNAVAILABLE", "down");
        recorder.flow_done(true);
        recorder.flow_done(false);
        let summary = recorder.summary();
        let place = summary.step(Step::PlaceOrder).unwrap();
        assert_eq!(place.ok, 100);
        assert_eq!(place.errors["UNAVAILABLE"], 2);
        assert_eq!(place.error_samples, ["UNAVAILABLE: down"]);
        assert!((94.0..=96.0).contains(&place.p95_ms), "{}", place.p95_ms);
        assert!((99.0..=101.0).contains(&place.max_ms), "{}", place.max_ms);
        assert_eq!((summary.flows_ok, summary.flows_failed), (1, 1));
        assert_eq!(summary.errors(), 2);
        assert_eq!(summary.timeline[0].flows_ok, 1);
        assert_eq!(summary.timeline[0].errors, 2);
    }
}
