//! Drives virtual users: set up (sign up or log in), then loop the flow in
//! closed loop (each user waits for its flow, thinks, goes again) or open
//! loop (flows start at a rate whatever the answers do).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::flow::{Account, CallPolicy, Targets, User};
use crate::stats::{Recorder, Step, Summary};

#[derive(Clone, Debug, Serialize)]
pub enum Arrival {
    /// Each user: flow, then `think`; with `paced`, flows start `think`
    /// apart (at once when one took longer).
    Closed { think: Duration, paced: bool },
    /// Flows start at `rate` a second (Poisson arrivals), each by the next
    /// user in turn; at most `max_in_flight` at once, arrivals past that
    /// are counted as dropped.
    Open { rate: f64, max_in_flight: usize },
}

#[derive(Clone, Debug, Serialize)]
pub struct RunConfig {
    pub targets: Targets,
    pub users: usize,
    pub arrival: Arrival,
    /// Stop starting flows after this long...
    pub duration: Duration,
    /// ...or after this many (whichever comes first).
    pub max_flows: Option<u64>,
    /// How long in-flight flows get to finish after the end.
    pub drain: Duration,
    pub policy: CallPolicy,
    /// Sign-ups in flight at once during setup (each costs a password hash).
    pub setup_concurrency: usize,
    /// Names accounts apart between runs: load.<tag>.<n>@example.com.
    pub tag: String,
    /// Keep every acknowledged order id (fault checks).
    pub keep_orders: bool,
    pub progress: bool,
}

/// An order PlaceOrder acknowledged, and whether the flow saw it confirmed.
#[derive(Clone, Debug, Serialize)]
pub struct PlacedOrder {
    pub user: usize,
    pub order_id: String,
    pub confirmed: bool,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub config: RunConfig,
    pub setup_seconds: f64,
    pub setup: Summary,
    pub run_seconds: f64,
    pub flows_per_second: f64,
    pub dropped_arrivals: u64,
    pub unfinished_flows: u64,
    pub run: Summary,
    #[serde(skip)]
    pub orders: Vec<PlacedOrder>,
}

impl Report {
    /// Errors of the run phase, arrivals dropped and flows cut off included.
    pub fn errors(&self) -> u64 {
        self.run.errors() + self.dropped_arrivals + self.unfinished_flows
    }

    /// The highest p95 of the flow's RPCs, and which.
    pub fn worst_rpc_p95(&self) -> (Step, f64) {
        Step::FLOW_RPCS
            .iter()
            .map(|&step| (step, self.run.step(step).map_or(0.0, |s| s.p95_ms)))
            .fold((Step::CreateSession, 0.0), |worst, this| {
                if this.1 > worst.1 { this } else { worst }
            })
    }

    pub fn confirm_p95(&self) -> f64 {
        self.run
            .step(Step::PlaceToConfirmed)
            .map_or(f64::INFINITY, |s| s.p95_ms)
    }
}

/// Users made (or logged in) `setup_concurrency` at a time. Accounts given
/// are logged in to; the rest are signed up. The first failure ends setup.
pub async fn set_up(
    config: &RunConfig,
    known: Vec<Account>,
    recorder: Arc<Recorder>,
) -> Result<Vec<Arc<User>>, String> {
    let gate = Arc::new(Semaphore::new(config.setup_concurrency.max(1)));
    let mut known = known.into_iter();
    let mut making = JoinSet::new();
    for index in 0..config.users {
        let account = known.next();
        let (gate, recorder) = (gate.clone(), recorder.clone());
        let (targets, tag) = (config.targets.clone(), config.tag.clone());
        making.spawn(async move {
            let _turn = gate.acquire_owned().await;
            User::set_up(index, &targets, &tag, account, &recorder)
                .await
                .ok()
        });
    }
    let mut users = Vec::with_capacity(config.users);
    while let Some(made) = making.join_next().await {
        match made {
            Ok(Some(user)) => users.push(Arc::new(user)),
            _ => {
                making.abort_all();
                let samples: Vec<_> = recorder
                    .summary()
                    .steps
                    .values()
                    .flat_map(|s| s.error_samples.iter().cloned())
                    .collect();
                return Err(format!("setup failed: {}", samples.join("; ")));
            }
        }
    }
    users.sort_by_key(|u| u.index);
    Ok(users)
}

/// Runs the flows and reports. `users` come from [`set_up`].
pub async fn run(config: RunConfig, users: Vec<Arc<User>>, setup: (Duration, Summary)) -> Report {
    let recorder = Arc::new(Recorder::new(true));
    let started = Instant::now();
    let end = started + config.duration;
    let started_flows = Arc::new(AtomicU64::new(0));
    let orders = Arc::new(std::sync::Mutex::new(Vec::new()));
    let may_start = {
        let started_flows = started_flows.clone();
        let max = config.max_flows;
        move || {
            Instant::now() < end
                && max.is_none_or(|max| started_flows.fetch_add(1, Ordering::Relaxed) < max)
        }
    };
    let progress = config.progress.then(|| {
        let recorder = recorder.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let p = recorder.progress();
                eprintln!(
                    "{:>5.0}s  flows {:>7} ok {:>5} failed  {:>5}/s  errors {:>5}  confirm p95 {}",
                    recorder.elapsed().as_secs_f64(),
                    p.flows_ok,
                    p.flows_failed,
                    p.last_second_flows,
                    p.errors,
                    p.last_second_confirm_p95
                        .map_or("-".to_owned(), |ms| format!("{ms:.1} ms")),
                );
            }
        })
    });

    let one_flow = {
        let recorder = recorder.clone();
        let policy = config.policy.clone();
        let orders = orders.clone();
        let keep = config.keep_orders;
        move |user: Arc<User>| {
            let recorder = recorder.clone();
            let policy = policy.clone();
            let orders = orders.clone();
            async move {
                let mut placed = None;
                let outcome = user.flow(&recorder, &policy, &mut placed).await;
                recorder.flow_done(outcome.is_ok());
                if keep && let Some(order_id) = placed {
                    orders.lock().unwrap().push(PlacedOrder {
                        user: user.index,
                        order_id,
                        confirmed: outcome.is_ok(),
                    });
                }
            }
        }
    };

    let mut flows = JoinSet::new();
    let mut dropped = 0;
    match config.arrival {
        Arrival::Closed { think, paced } => {
            for user in &users {
                let user = user.clone();
                let one_flow = one_flow.clone();
                let may_start = may_start.clone();
                // Spread the users' first flows over one think time.
                let offset = think.mul_f64(rand::random::<f64>());
                flows.spawn(async move {
                    tokio::time::sleep(offset).await;
                    loop {
                        let began = Instant::now();
                        if !may_start() {
                            break;
                        }
                        one_flow(user.clone()).await;
                        let wait = if paced {
                            think.saturating_sub(began.elapsed())
                        } else {
                            think.mul_f64(0.5 + rand::random::<f64>())
                        };
                        if Instant::now() + wait >= end {
                            break;
                        }
                        tokio::time::sleep(wait).await;
                    }
                });
            }
        }
        Arrival::Open {
            rate,
            max_in_flight,
        } => {
            let in_flight = Arc::new(Semaphore::new(max_in_flight.max(1)));
            let mut next_at = Instant::now();
            let mut turn = 0;
            while may_start() {
                // Exponential gaps: a Poisson process of `rate` a second.
                let gap = -(1.0 - rand::random::<f64>()).ln() / rate.max(0.001);
                next_at += Duration::from_secs_f64(gap);
                tokio::time::sleep_until(next_at.into()).await;
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    dropped += 1;
                    continue;
                };
                let user = users[turn % users.len()].clone();
                turn += 1;
                let flow = one_flow(user);
                flows.spawn(async move {
                    flow.await;
                    drop(permit);
                });
                // Reap finished flows so the set stays small.
                while flows.try_join_next().is_some() {}
            }
        }
    }

    let drained = tokio::time::timeout_at((end + config.drain).into(), async {
        while flows.join_next().await.is_some() {}
    });
    let unfinished = match drained.await {
        Ok(()) => 0,
        Err(_) => {
            let left = flows.len() as u64;
            flows.abort_all();
            left
        }
    };
    // Flows in flight at the end finish inside the drain: not run time.
    let run_seconds = started.elapsed().min(config.duration).as_secs_f64();
    if let Some(progress) = progress {
        progress.abort();
    }
    let run = recorder.summary();
    let orders = std::mem::take(&mut *orders.lock().unwrap());
    Report {
        flows_per_second: run.flows_ok as f64 / run_seconds.max(0.001),
        config,
        setup_seconds: setup.0.as_secs_f64(),
        setup: setup.1,
        run_seconds,
        dropped_arrivals: dropped,
        unfinished_flows: unfinished,
        run,
        orders,
    }
}
