//! The churn-risk path end to end: CDNOW's 2,357 customers (calibration summary
//! shipped with `lifetimes`, tests/fixtures/lifetimes) turned into Purchase
//! events, replayed through `engaged replay --customer-risks`, give the
//! per-customer P(alive) that `lifetimes`' fitters give (within 0.005), for the
//! default MBG/NBD and for BG/NBD.

mod support;

use std::collections::HashMap;
use std::ffi::OsStr;

use apache_avro::{Schema, Writer};
use engaged::event::{EventKind, Purchase, PurchaseType};
use engaged::model::{Model, Params};
use serde_json::Value;

use support::engaged_ok;

const WEEK_MS: f64 = 7.0 * 86_400_000.0;
/// End of the 39-week calibration period (any fixed instant works: only differences matter).
const END: i64 = 1_767_225_600_000;

struct Row {
    id: String,
    x: u32,
    t_x: f64,
    t: f64,
    m: f64,
}

fn read_csv(path: &str) -> Vec<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    lines
        .map(|l| {
            header
                .iter()
                .cloned()
                .zip(l.split(',').map(String::from))
                .collect()
        })
        .collect()
}

fn summary() -> Vec<Row> {
    read_csv("tests/fixtures/lifetimes/cdnow_summary.csv")
        .into_iter()
        .map(|r| Row {
            id: r["id"].clone(),
            x: r["x"].parse().unwrap(),
            t_x: r["t_x"].parse().unwrap(),
            t: r["T"].parse().unwrap(),
            m: r["m"].parse().unwrap(),
        })
        .collect()
}

/// One first ORDER at END − T, x repeat ORDERs spread evenly up to the last at first + t_x.
fn purchases(rows: &[Row]) -> Vec<Purchase> {
    let mut out = vec![];
    for r in rows {
        let first = END - (r.t * WEEK_MS).round() as i64;
        let last = first + (r.t_x * WEEK_MS).round() as i64;
        let order = |n: u32, t: i64, amount: i64| Purchase {
            event_id: format!("{}-{n}", r.id),
            event_time: t,
            customer_id: format!("cdnow-{}", r.id),
            order_id: format!("{}-{n}", r.id),
            kind: PurchaseType::Order,
            amount_minor: amount,
            currency: "USD".into(),
            cost_minor: None,
            items: 1,
            campaign_id: None,
        };
        out.push(order(0, first, 1_000));
        for k in 1..=r.x {
            let t = first + (last - first) * k as i64 / r.x as i64;
            // Every repeat ORDER worth the customer's mean repeat value, in cents.
            out.push(order(k, t, (r.m * 100.0).round() as i64));
        }
    }
    out.sort_by_key(|p| p.event_time);
    out
}

fn replay(file: &std::path::Path, model: &str) -> HashMap<String, Value> {
    let dir = file.parent().unwrap();
    let risks = dir.join(format!("risks-{model}.jsonl"));
    engaged_ok(
        [OsStr::new("replay"), file.as_os_str()]
            .into_iter()
            .chain(
                [
                    "--at",
                    &END.to_string(),
                    "--windows",
                    "7d",
                    "--currency",
                    "USD",
                ]
                .map(OsStr::new),
            )
            .chain(
                [
                    "--model",
                    model,
                    "--model-sample-size",
                    "0",
                    "--no-progress",
                ]
                .map(OsStr::new),
            )
            .chain([OsStr::new("--customer-risks"), risks.as_os_str()]),
    );
    std::fs::read_to_string(&risks)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["customer_id"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

#[test]
fn replayed_cdnow_purchases_reproduce_lifetimes_p_alive_and_expected_orders() {
    let rows = summary();
    assert_eq!(rows.len(), 2357);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cdnow.avro");
    let schema = Schema::parse_str(EventKind::Purchase.schema_json()).unwrap();
    let mut w = Writer::new(&schema, std::fs::File::create(&file).unwrap()).unwrap();
    for p in purchases(&rows) {
        w.append_ser(p).unwrap();
    }
    w.flush().unwrap();
    drop(w);

    let predictions = read_csv("tests/fixtures/lifetimes/predictions.csv");
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string("tests/fixtures/lifetimes/reference.json").unwrap(),
    )
    .unwrap();
    for (model, name, column) in [
        (Model::MbgNbd, "mbg_nbd", "mbg_p_alive"),
        (Model::BgNbd, "bg_nbd", "bg_p_alive"),
    ] {
        let got = replay(&file, name);
        assert_eq!(got.len(), 2357, "{name}: one record per customer");
        let p = &reference[name];
        let params = Params {
            r: p["r"].as_f64().unwrap(),
            alpha: p["alpha"].as_f64().unwrap(),
            a: p["a"].as_f64().unwrap(),
            b: p["b"].as_f64().unwrap(),
        };
        let (mut worst_alive, mut worst_orders) = (0f64, 0f64);
        let mut checked_values = 0;
        for (row, pred) in rows.iter().zip(&predictions) {
            assert_eq!(pred["id"], row.id);
            let r = &got[&format!("cdnow-{}", row.id)];
            assert_eq!(r["model"], name);
            assert_eq!(r["x"].as_u64().unwrap(), u64::from(row.x));
            let want_alive: f64 = pred[column].parse().unwrap();
            let alive = r["p_alive"].as_f64().unwrap();
            worst_alive = worst_alive.max((alive - want_alive).abs());
            assert!((r["churn_risk"].as_f64().unwrap() - (1.0 - alive)).abs() < 1e-12);
            // Expected ORDERs in the next 30 days = lifetimes' parameters (weeks) at t = 30/7 weeks.
            let want_orders = model.expected_purchases(&params, row.x, row.t_x, row.t, 30.0 / 7.0);
            let orders = r["expected_orders_30d"].as_f64().unwrap();
            worst_orders = worst_orders.max((orders - want_orders).abs());
            // Predicted value = expected orders x Gamma-Gamma's expected order value (cents).
            // (lifetimes' fixture has it for repeat customers, the ones Gamma-Gamma is fitted on.)
            let Ok(gg) = pred["gg_profit"].parse::<f64>() else {
                continue;
            };
            checked_values += 1;
            let value = r["predicted_value_minor"].as_f64().unwrap();
            let want_value = orders * gg * 100.0;
            assert!(
                (value - want_value).abs() <= 0.01 * want_value.abs() + 1e-9,
                "{name} customer {}: predicted value {value}, lifetimes {want_value}",
                row.id
            );
        }
        assert!(
            checked_values > 900,
            "{checked_values} predicted values compared"
        );
        assert!(
            worst_alive < 0.005,
            "{name}: P(alive) differs by up to {worst_alive}"
        );
        assert!(
            worst_orders < 0.005,
            "{name}: expected orders differ by up to {worst_orders}"
        );
        eprintln!(
            "{name}: max |ΔP(alive)| = {worst_alive:.2e}, max |ΔE[orders 30d]| = {worst_orders:.2e}"
        );
    }
}
