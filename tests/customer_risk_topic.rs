//! Churn risk through Kafka (mock cluster): ORDERs in, a background refit, and
//! `CustomerRisk` records on the customer-risk topic keyed by customer_id, with
//! `engaged_churn_*` series on /metrics that agree with them.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use engaged::app::Sidecar;
use engaged::config::RawConfig;
use engaged::decode::{DecoderConfig, encode};
use engaged::event::{Event, Purchase, PurchaseType};
use engaged::metrics::churn_risk::CustomerRisk;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

const DAY: i64 = 86_400_000;

#[allow(unsafe_code)]
fn no_initial_rebalance_delay(producer: &FutureProducer) {
    // SAFETY: the producer owns the mock cluster; this only sets a mock option.
    unsafe {
        let mc = rdkafka_sys::rd_kafka_handle_mock_cluster(producer.client().native_ptr());
        assert!(!mc.is_null());
        rdkafka_sys::rd_kafka_mock_group_initial_rebalance_delay_ms(mc, 0);
    }
}

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

fn metrics(addr: std::net::SocketAddr) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.split_once("\r\n\r\n").unwrap().1.to_string()
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

fn read_risks(bootstrap: &str) -> Vec<CustomerRisk> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "risk-reader")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("engagement.customer-risk", 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut out = vec![];
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let r = engaged::sink::decode_customer_risk_record(m.payload().unwrap()).unwrap();
                assert_eq!(
                    m.key(),
                    Some(r.customer_id.as_bytes()),
                    "keyed by customer_id"
                );
                out.push(r);
            }
            Some(Err(_)) => break, // end of partition
            None => {}
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_risk_records_reach_the_topic_and_agree_with_metrics() {
    let producer: FutureProducer = ClientConfig::new()
        .set("test.mock.num.brokers", "1")
        .create()
        .unwrap();
    let bootstrap = {
        let mock = producer.client().mock_cluster().unwrap();
        mock.create_topic("purchases", 1, 1).unwrap();
        for t in [
            "engagement.snapshots",
            "engagement.dlq",
            "engagement.checkpoints",
            "engagement.customer-risk",
        ] {
            mock.create_topic(t, 1, 1).unwrap();
        }
        mock.bootstrap_servers()
    };
    no_initial_rebalance_delay(&producer);

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
        let payload = encode::single_object(e);
        producer
            .send(
                FutureRecord::to("purchases")
                    .partition(0)
                    .key("k")
                    .payload(&payload),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
    }

    let config = RawConfig {
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
    }
    .validate()
    .unwrap();
    let sidecar = Sidecar::start(config, &DecoderConfig::default())
        .await
        .unwrap();
    let addr = sidecar.http.addr;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(sidecar.run(async move {
        let _ = rx.await;
    }));

    // Wait for a fitted model and a sweep: at-risk customers on /metrics.
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let t = tokio::task::spawn_blocking(move || metrics(addr))
            .await
            .unwrap();
        if value(&t, "engaged_churn_at_risk_customers").is_some() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            break tokio::task::spawn_blocking(move || metrics(addr))
                .await
                .unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no churn model within 60 s:\n{t}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = tx.send(());
    run.await.unwrap().unwrap();

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
    let records = read_risks(&bootstrap);
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
