//! Churn risk through Kafka (mock cluster): ORDERs in, a background refit, and
//! `CustomerRisk` records on the customer-risk topic keyed by customer_id, with
//! `engaged_churn_*` series on /metrics that agree with them.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use engaged::config::RawConfig;
use engaged::decode::{DecoderConfig, encode};
use engaged::event::{Event, Purchase, PurchaseType};
use engaged::metrics::churn_risk::CustomerRisk;
use rdkafka::message::Message;

use support::{Cluster, Running, engaged_topics, fetch, read_topic, value};

const DAY: i64 = 86_400_000;

fn order(customer: &str, n: usize, t: i64) -> Event {
    Event::Purchase(Purchase {
        event_id: format!("{customer}-{n}"),
        event_time: t,
        customer_id: customer.into(),
        order_id: format!("{customer}-{n}"),
        kind: PurchaseType::Order,
        amount_minor: 2_000 + (n as i64 % 7) * 500,
        currency: "EUR".into(),
        cost_minor: None,
        items: 1,
        campaign_id: None,
    })
}

async fn read_risks(bootstrap: &str) -> Vec<CustomerRisk> {
    read_topic(bootstrap, "engagement.customer-risk")
        .await
        .iter()
        .map(|m| {
            let r = engaged::sink::decode_customer_risk_record(m.payload().unwrap()).unwrap();
            assert_eq!(
                m.key(),
                Some(r.customer_id.as_bytes()),
                "keyed by customer_id"
            );
            r
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_risk_records_reach_the_topic_and_agree_with_metrics() {
    let mut topics = engaged_topics(&["purchases"], 1);
    topics.push(("engagement.customer-risk", 1));
    let cluster = Cluster::new(&topics);
    let bootstrap = cluster.bootstrap.clone();

    // 60 weekly buyers who stopped 120 days ago, 60 who still buy weekly, 60 one-time buyers.
    let now = chrono::Utc::now().timestamp_millis();
    let mut events = vec![];
    for i in 0..60 {
        let stopped = format!("stopped-{i:02}");
        for k in 0..10 {
            events.push(order(
                &stopped,
                k,
                now - 200 * DAY + k as i64 * 7 * DAY + i * 60_000,
            ));
        }
        let active = format!("active-{i:02}");
        for k in 0..28 {
            events.push(order(
                &active,
                k,
                now - 190 * DAY + k as i64 * 7 * DAY + i * 60_000,
            ));
        }
        events.push(order(
            &format!("once-{i:02}"),
            0,
            now - 150 * DAY + i * 60_000,
        ));
    }
    events.sort_by_key(|e| e.event_time());
    for e in &events {
        cluster
            .send("purchases", 0, "k", encode::single_object(e))
            .await;
    }

    let raw = RawConfig {
        bootstrap_servers: bootstrap.clone(),
        group_id: "risk".into(),
        input_topics: vec!["purchases".into()],
        listen: "127.0.0.1:0".into(),
        windows: vec!["1h".into(), "30d".into()],
        snapshot_interval: "300ms".into(),
        model_refit_interval: "1s".into(),
        idle_timeout: "1s".into(),
        risk_threshold: 0.5,
        ..RawConfig::default()
    };
    let sidecar = Running::start(raw, &DecoderConfig::default()).await;
    let addr = sidecar.addr;

    // Wait for a fitted model and a sweep: at-risk customers on /metrics.
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let t = fetch(addr, "/metrics").await.unwrap().1;
        if value(&t, "engaged_churn_at_risk_customers").is_some() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            break fetch(addr, "/metrics").await.unwrap().1;
        }
        assert!(
            Instant::now() < deadline,
            "no churn model within 60 s:\n{t}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    sidecar.stop().await.unwrap();

    assert_eq!(
        value(&text, "engaged_churn_model_fitted_customers"),
        Some(180.0)
    );
    assert!(
        value(
            &text,
            "engaged_churn_model_parameter{model=\"mbg_nbd\",parameter=\"r\"}"
        )
        .is_some_and(|r| r > 0.0)
    );
    let records = read_risks(&bootstrap).await;
    // The latest record per customer.
    let latest: HashMap<String, CustomerRisk> = records
        .into_iter()
        .map(|r| (r.customer_id.clone(), r))
        .collect();
    assert_eq!(
        latest.len(),
        180,
        "every customer was published once at least"
    );
    let by_group = |prefix: &str| -> Vec<&CustomerRisk> {
        latest
            .values()
            .filter(|r| r.customer_id.starts_with(prefix))
            .collect()
    };
    let mean = |v: &[&CustomerRisk]| v.iter().map(|r| r.churn_risk).sum::<f64>() / v.len() as f64;
    let (stopped, active) = (by_group("stopped-"), by_group("active-"));
    // Weekly buyers silent for 17 weeks are far riskier than those who keep buying.
    assert!(mean(&stopped) > 0.9, "stopped: {}", mean(&stopped));
    assert!(mean(&active) < 0.1, "active: {}", mean(&active));
    assert!(
        stopped
            .iter()
            .all(|r| r.at_risk && r.x == 9 && r.model == "mbg_nbd")
    );
    assert!(
        active
            .iter()
            .all(|r| !r.at_risk && r.expected_orders_30d > 1.0)
    );
    // The gauge counts the customers whose latest record says at risk.
    let at_risk = latest.values().filter(|r| r.at_risk).count() as f64;
    assert_eq!(
        value(&text, "engaged_churn_at_risk_customers"),
        Some(at_risk)
    );
    let buckets: BTreeMap<String, f64> = text
        .lines()
        .filter(|l| l.starts_with("engaged_churn_risk_customers{"))
        .filter_map(|l| {
            l.rsplit_once(' ')
                .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        })
        .collect();
    assert_eq!(buckets.values().sum::<f64>(), 180.0, "{buckets:?}");
}
