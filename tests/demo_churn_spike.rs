//! `engaged demo --scenario churn-spike` makes `engaged_churn_risk_crossings` jump far
//! above its baseline (issue 14, item 7), checked deterministically: the demo's own
//! plan and configuration, its generator driven in event time through the pipeline,
//! with sweeps, snapshots and refits at the demo's cadence at its default time scale
//! (a sweep and a snapshot every 2 s of wall time, the first fit 30 s after the start,
//! then every `Plan::refit_interval`). No wall clock and no Kafka: what is checked is
//! the crossings the scenario causes, not how fast a machine runs it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use engaged::decode::{Decoder, DecoderConfig};
use engaged::demo::generator::{DEFAULT_START, Generator};
use engaged::demo::runner::{self, Plan, Scenario};
use engaged::event::Millis;
use engaged::pipeline::Pipeline;
use engaged::state::{Engine, TopicPartition};
use engaged::telemetry::Telemetry;

const HOUR: Millis = 3_600_000;
const DAY: Millis = 24 * HOUR;
/// The demo's default time scale, snapshot interval and `--spike-after`.
const TIME_SCALE: f64 = 600.0;
const SNAPSHOT_WALL: Duration = Duration::from_secs(2);
const SPIKE_AFTER: Duration = Duration::from_secs(60);

/// Wall time at the demo's time scale → event time.
fn scaled(d: Duration) -> Millis {
    (d.as_secs_f64() * TIME_SCALE * 1000.0) as Millis
}

/// One snapshot round.
#[derive(Debug, Clone, Copy)]
struct Round {
    watermark: Millis,
    crossings_1h: i64,
    crossings_24h: i64,
    at_risk: i64,
}

struct Run {
    plan: Plan,
    rounds: Vec<Round>,
    /// Regulars (`r-…`) whose customer-risk record said "at risk", and when.
    regulars_at_risk: Vec<(String, Millis)>,
}

/// Runs the demo's `scenario` in event time until `until` after the warm-up.
fn run(scenario: Scenario, until: Millis) -> Run {
    // Any fixed "now": the plan puts event time before it.
    let now = DEFAULT_START + 60 * DAY;
    let plan = runner::plan(scenario, TIME_SCALE, SPIKE_AFTER, 42, now);
    let raw = runner::demo_config(
        "mock:9092".into(),
        "127.0.0.1:0".parse().unwrap(),
        plan.refit_interval,
    );
    let mut core = raw.validate().unwrap().core;
    // One partition of one topic carries every family: the order of events is theirs.
    core.input_topics = vec!["demo".into()];
    let pipeline = Pipeline::new(
        Decoder::new(&DecoderConfig::default()).unwrap(),
        Engine::new(core),
        Arc::new(Telemetry::new()),
        None,
        i64::MAX,
    );
    let tp = TopicPartition::new("demo", 0);
    pipeline.assign(std::slice::from_ref(&tp), 0);

    let start = plan.generator.start;
    let warm = start + runner::WARMUP_MS;
    let mut generator = Generator::new(plan.generator.clone());
    let mut next_refit = warm + scaled(plan.refit_interval.min(Duration::from_secs(30)));
    let mut out = Run {
        plan: plan.clone(),
        rounds: vec![],
        regulars_at_risk: vec![],
    };
    let mut t = start;
    while t < warm + until {
        t += scaled(SNAPSHOT_WALL);
        for e in generator.advance_to(t) {
            pipeline
                .handle_event(&tp, &e, None)
                .expect("one partition in event-time order: nothing is late");
        }
        let w = pipeline
            .engine()
            .watermark_of(&tp)
            .expect("events every round");
        if t >= next_refit {
            let m = pipeline.fit_risk_model_at(w).unwrap().unwrap();
            pipeline.install_risk_model(m);
            next_refit += scaled(plan.refit_interval);
        }
        pipeline.rescore(w);
        let snaps = pipeline.snapshot_at(w, None);
        let crossings = |window: &str| {
            snaps
                .iter()
                .find(|s| s.dimension == "all" && s.window == window)
                .and_then(|s| s.risk_crossings)
                .unwrap_or(0)
        };
        out.rounds.push(Round {
            watermark: w,
            crossings_1h: crossings("1h"),
            crossings_24h: crossings("24h"),
            at_risk: snaps.iter().find_map(|s| s.at_risk_customers).unwrap_or(0),
        });
        for r in pipeline.take_risk_changes() {
            if r.at_risk && r.customer_id.starts_with("r-") {
                out.regulars_at_risk.push((r.customer_id, r.watermark));
            }
        }
    }
    out
}

fn max_in(rounds: &[Round], from: Millis, to: Millis, f: impl Fn(&Round) -> i64) -> i64 {
    rounds
        .iter()
        .filter(|r| (from..to).contains(&r.watermark))
        .map(f)
        .max()
        .unwrap_or(0)
}

#[test]
fn churn_spike_makes_risk_crossings_jump_far_above_their_baseline() {
    let spike_wall = SPIKE_AFTER + runner::MIN_SPIKE_AFTER;
    let run = run(Scenario::ChurnSpike, scaled(spike_wall) + 2 * DAY);
    let spike = run.plan.spike_at.unwrap();
    let rounds = &run.rounds;
    let first_fit = rounds
        .iter()
        .position(|r| r.watermark >= spike - scaled(SPIKE_AFTER) / 2)
        .unwrap();
    let rounds = &rounds[first_fit..];
    for r in rounds.iter().step_by(6) {
        eprintln!(
            "{:>+6.1}h after the spike: crossings 1h {:>4}, 24h {:>4}",
            (r.watermark - spike) as f64 / HOUR as f64,
            r.crossings_1h,
            r.crossings_24h
        );
    }

    // Baseline: from the first fit to half a day after the spike (the cohort is silent
    // by then, but its silence is not unusual yet).
    let baseline_1h = max_in(rounds, 0, spike + DAY / 2, |r| r.crossings_1h);
    let baseline_24h = max_in(rounds, 0, spike + DAY / 2, |r| r.crossings_24h);
    let peak_1h = max_in(rounds, spike, spike + 2 * DAY, |r| r.crossings_1h);
    let peak_24h = max_in(rounds, spike, spike + 2 * DAY, |r| r.crossings_24h);
    eprintln!(
        "1h: baseline {baseline_1h}, peak {peak_1h}; 24h: baseline {baseline_24h}, peak {peak_24h}"
    );
    assert!(
        baseline_1h > 0,
        "a steady trickle of crossings before the spike"
    );
    assert!(
        peak_1h >= 10 * baseline_1h && peak_1h >= 50,
        "1h: peak {peak_1h} vs baseline {baseline_1h}"
    );
    assert!(
        peak_24h >= 3 * baseline_24h && peak_24h >= baseline_24h + runner::REGULARS as i64 / 2,
        "24h: peak {peak_24h} vs baseline {baseline_24h}"
    );

    // The jump comes within about a day and a half of event time: at the default time
    // scale, a few minutes of wall time after the spike.
    let jump = rounds
        .iter()
        .find(|r| r.watermark >= spike && r.crossings_1h >= 5 * baseline_1h)
        .unwrap();
    let after = Duration::from_secs_f64((jump.watermark - spike) as f64 / 1000.0 / TIME_SCALE);
    eprintln!("the 1h window reached 5x its baseline {after:?} of wall time after the spike");
    assert!(jump.watermark - spike <= 36 * HOUR, "{after:?}");

    // It is the regulars: nearly all of them crossed, after the spike, in sweeps that
    // counted (the model fitted before the spike was not replaced in between).
    let crossed: BTreeSet<&str> = run
        .regulars_at_risk
        .iter()
        .filter(|(_, at)| (spike..spike + 2 * DAY).contains(at))
        .map(|(c, _)| c.as_str())
        .collect();
    assert!(
        crossed.len() as u32 >= runner::REGULARS * 9 / 10,
        "{} of {} regulars crossed",
        crossed.len(),
        runner::REGULARS
    );
    assert!(
        run.regulars_at_risk.iter().all(|(_, at)| *at >= spike),
        "no regular was at risk before the spike"
    );
    assert!(
        run.plan.refit_interval >= spike_wall + Duration::from_secs(2 * DAY as u64 / 600_000),
        "{:?}",
        run.plan.refit_interval
    );
}

#[test]
fn steady_traffic_has_no_spike() {
    let run = run(Scenario::Steady, 2 * DAY);
    assert!(run.plan.spike_at.is_none() && run.plan.generator.regulars.is_none());
    let peak_1h = run.rounds.iter().map(|r| r.crossings_1h).max().unwrap();
    let peak_24h = run.rounds.iter().map(|r| r.crossings_24h).max().unwrap();
    let at_risk = run.rounds.iter().map(|r| r.at_risk).max().unwrap();
    eprintln!("steady: peak crossings 1h {peak_1h}, 24h {peak_24h}; at risk at most {at_risk}");
    assert!(
        peak_1h < 25 && peak_24h < 100,
        "steady peak {peak_1h} (1h), {peak_24h} (24h)"
    );
    assert!(run.regulars_at_risk.is_empty());
}
