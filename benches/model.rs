//! Churn-risk model costs (customers/s): rescoring every customer after a refit
//! (P(alive) + expected orders in the next 30 days), and a refit on 100k
//! customers from a warm start near the truth and from the cold start.
//! Synthetic customers are drawn from the demo's population (days: r = 1.2,
//! α = 25, a = 0.7, b = 3.5) with ages uniform over two years and continuous
//! times, so aggregation finds almost no identical rows (the worst case).
//!
//!     cargo bench --bench model -- --warm-up-time 1 --measurement-time 3

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use engaged::model::simulate::{simulate, simulate_mean_value};
use engaged::model::{
    FitData, FitOptions, GammaGammaParams, History, Model, Params, Scorer, SpendData, gamma_gamma,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

const TRUTH: Params = Params {
    r: 1.2,
    alpha: 25.0,
    a: 0.7,
    b: 3.5,
};
const SPEND: GammaGammaParams = GammaGammaParams {
    p: 6.0,
    q: 3.5,
    v: 150.0,
};
const HORIZON_DAYS: f64 = 30.0;

fn customers(model: Model, n: usize, seed: u64) -> Vec<History> {
    let mut rng = StdRng::seed_from_u64(seed);
    let ages: Vec<f64> = (0..n)
        .map(|i| 730.0 * (i as f64 + 0.5) / n as f64)
        .collect();
    simulate(model, &TRUTH, &ages, &mut rng)
}

fn rescore(c: &mut Criterion) {
    let people = customers(Model::MbgNbd, 1_000_000, 1);
    let mut group = c.benchmark_group("model_rescore");
    group.sample_size(10);
    group.throughput(Throughput::Elements(people.len() as u64));
    for model in [Model::MbgNbd, Model::BgNbd] {
        let scorer = Scorer::new(model, TRUTH);
        group.bench_function(format!("{model}_1m_customers_p_alive_and_30d"), |b| {
            b.iter(|| {
                let mut acc = 0.0;
                for h in &people {
                    let s = scorer.score(h.x, h.t_x, h.age, HORIZON_DAYS);
                    acc += s.p_alive + s.expected_purchases;
                }
                black_box(acc)
            })
        });
    }
    group.finish();
}

fn refit(c: &mut Criterion) {
    let n = 100_000;
    let mut group = c.benchmark_group("model_refit");
    group.sample_size(10);
    group.throughput(Throughput::Elements(n as u64));
    let opts = FitOptions::default();
    let near = Params {
        r: TRUTH.r * 1.1,
        alpha: TRUTH.alpha * 0.9,
        a: TRUTH.a * 1.1,
        b: TRUTH.b * 0.9,
    };
    for model in [Model::MbgNbd, Model::BgNbd] {
        let people = customers(model, n, 2);
        let data = FitData::new(people.iter().copied()).unwrap();
        let cold = model.fit(&data, None, &opts).unwrap();
        let warm = model.fit(&data, Some(near), &opts).unwrap();
        eprintln!(
            "{model} on {n} customers ({} distinct rows): cold {} it / {} evals, converged {}, {:?}; \
             warm {} it / {} evals, converged {}",
            data.len(),
            cold.iterations,
            cold.evaluations,
            cold.converged,
            cold.params,
            warm.iterations,
            warm.evaluations,
            warm.converged,
        );
        group.bench_function(format!("{model}_100k_warm_start"), |b| {
            b.iter(|| black_box(model.fit(&data, Some(near), &opts).unwrap()))
        });
        group.bench_function(format!("{model}_100k_cold_start"), |b| {
            b.iter(|| black_box(model.fit(&data, None, &opts).unwrap()))
        });
        if model == Model::MbgNbd {
            group.bench_function("aggregate_100k_rows", |b| {
                b.iter_batched(
                    || people.clone(),
                    |rows| black_box(FitData::new(rows).unwrap()),
                    BatchSize::LargeInput,
                )
            });
            group.bench_function(format!("{model}_100k_log_likelihood"), |b| {
                b.iter(|| black_box(model.log_likelihood(&TRUTH, &data)))
            });
        }
    }
    // Gamma-Gamma on the repeat customers' order values.
    let mut rng = StdRng::seed_from_u64(3);
    let spend: Vec<(u32, f64)> = customers(Model::MbgNbd, n, 4)
        .iter()
        .filter(|h| h.x > 0)
        .map(|h| (h.x, simulate_mean_value(&SPEND, h.x, &mut rng)))
        .collect();
    let spend_data = SpendData::new(spend.iter().copied()).unwrap();
    let gg = gamma_gamma::fit(&spend_data, None, &opts).unwrap();
    eprintln!(
        "gamma_gamma on {} repeat customers: cold {} it / {} evals, converged {}, {:?}",
        spend.len(),
        gg.iterations,
        gg.evaluations,
        gg.converged,
        gg.params
    );
    group.throughput(Throughput::Elements(spend.len() as u64));
    group.bench_function("gamma_gamma_repeat_customers_cold_start", |b| {
        b.iter(|| black_box(gamma_gamma::fit(&spend_data, None, &opts).unwrap()))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1));
    targets = rescore, refit
}
criterion_main!(benches);
