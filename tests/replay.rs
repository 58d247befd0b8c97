//! `engaged replay` on a file written by Python fastavro (tests/fixtures/make_fixtures.py)
//! prints per-window snapshots equal to an independent recomputation.

mod support;

use std::collections::BTreeMap;
use std::process::Command;

use apache_avro::types::Value;
use serde_json::Value as Json;

use support::engaged_ok;

const FIXTURE: &str = "tests/fixtures/mixed_events.avro";
const TIMEOUT_MS: i64 = 30 * 60_000;

#[derive(Debug, Clone)]
struct View {
    visitor: String,
    site: String,
    time: i64,
    channel: String,
}

fn field<'a>(fields: &'a [(String, Value)], name: &str) -> &'a Value {
    &fields.iter().find(|(n, _)| n == name).unwrap().1
}

fn string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Union(_, inner) => string(inner),
        _ => None,
    }
}

fn long(v: &Value) -> i64 {
    match v {
        Value::Long(x) | Value::TimestampMillis(x) => *x,
        other => panic!("not a long: {other:?}"),
    }
}

/// Page views of the fixture, read with apache-avro's generic reader, and the
/// largest event time of any record.
fn read_fixture() -> (Vec<View>, i64) {
    let file = std::fs::File::open(FIXTURE).unwrap();
    let mut out = vec![];
    let mut max_time = i64::MIN;
    for v in apache_avro::Reader::new(file).unwrap() {
        let v = match v.unwrap() {
            Value::Union(_, inner) => *inner,
            other => other,
        };
        let Value::Record(fields) = v else {
            panic!("not a record")
        };
        max_time = max_time.max(long(field(&fields, "event_time")));
        if fields.iter().any(|(n, _)| n == "visitor_id") {
            out.push(View {
                visitor: string(field(&fields, "visitor_id")).unwrap(),
                site: string(field(&fields, "site")).unwrap(),
                time: long(field(&fields, "event_time")),
                channel: string(field(&fields, "channel")).unwrap_or_else(|| "(none)".into()),
            });
        }
    }
    (out, max_time)
}

/// (first, last, views) per session: sort each visitor's views, split at gaps >= 30 min.
fn sessions(views: &[View]) -> Vec<(i64, i64, usize)> {
    let mut by: BTreeMap<(&str, &str), Vec<i64>> = BTreeMap::new();
    for v in views {
        by.entry((&v.site, &v.visitor)).or_default().push(v.time);
    }
    let mut out = vec![];
    for (_, mut ts) in by {
        ts.sort();
        let mut start = 0;
        for i in 1..=ts.len() {
            if i == ts.len() || ts[i] - ts[i - 1] >= TIMEOUT_MS {
                out.push((ts[start], ts[i - 1], i - start));
                start = i;
            }
        }
    }
    out
}

fn replay(args: &[&str]) -> Vec<Json> {
    engaged_ok(["replay", FIXTURE].iter().chain(args))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn all_dim(snaps: &[Json], window: &str) -> Json {
    snaps
        .iter()
        .find(|s| s["window"] == window && s["dimension"] == "all")
        .unwrap_or_else(|| panic!("no {window}/all snapshot"))
        .clone()
}

#[test]
fn replay_matches_an_independent_recomputation() {
    let (views, last) = read_fixture();
    let sess = sessions(&views);
    // The fixture's own summary (computed by the Python script) agrees with ours.
    let summary: Json = serde_json::from_str(
        &std::fs::read_to_string("tests/fixtures/mixed_events.summary.json").unwrap(),
    )
    .unwrap();
    assert_eq!(summary["sessions"].as_u64().unwrap() as usize, sess.len());

    // Several final watermarks from the end of input on: the 3-day window
    // slides over the page views, which lie in the first two days.
    for at in [
        last,
        last + TIMEOUT_MS - 1,
        last + 20 * 3_600_000 + 12_345,
        last + 40 * 3_600_000,
    ] {
        let snaps = replay(&["--windows", "7d,3d/1h,1h,10m", "--at", &at.to_string()]);
        for (window, len, bucket) in [
            ("7d", 7 * 86_400_000i64, 7 * 86_400_000 / 60),
            ("3d", 3 * 86_400_000, 3_600_000),
            ("1h", 3_600_000, 60_000),
            ("10m", 600_000, 10_000),
        ] {
            let end = at.div_euclid(bucket) * bucket;
            let start = end - len;
            let s = all_dim(&snaps, window);
            assert_eq!(s["window_start"], start, "{window} at {at}");
            assert_eq!(s["window_end"], end, "{window} at {at}");
            let pv = views
                .iter()
                .filter(|v| v.time >= start && v.time < end)
                .count();
            assert_eq!(s["page_views"], pv, "page_views {window} at {at}");
            // A session closes at last + timeout; it is counted when that is <= at.
            let closed: Vec<_> = sess
                .iter()
                .filter(|(_, l, _)| {
                    l + TIMEOUT_MS <= at && l + TIMEOUT_MS >= start && l + TIMEOUT_MS < end
                })
                .collect();
            assert_eq!(s["sessions"], closed.len(), "sessions {window} at {at}");
            let bounced = closed.iter().filter(|(_, _, n)| *n == 1).count();
            assert_eq!(s["bounced_sessions"], bounced, "bounced {window} at {at}");
            let active = sess.iter().filter(|(_, l, _)| l + TIMEOUT_MS > at).count();
            assert_eq!(s["sessions_active"], active, "active {window} at {at}");
            let mut durs: Vec<i64> = closed.iter().map(|(f, l, _)| l - f).collect();
            durs.sort();
            let sum: i64 = durs.iter().sum();
            let got = s["session_duration_sum_seconds"].as_f64().unwrap();
            assert!(
                (got - sum as f64 / 1000.0).abs() < 1e-6,
                "duration sum {window} at {at}"
            );
            if closed.is_empty() {
                assert!(s["bounce_rate"].is_null() && s["session_duration_p50_seconds"].is_null());
            } else {
                let rate = s["bounce_rate"].as_f64().unwrap();
                assert!((rate - bounced as f64 / closed.len() as f64).abs() < 1e-12);
                let rank = |p: f64| {
                    durs[((p * durs.len() as f64).ceil() as usize).clamp(1, durs.len()) - 1]
                };
                assert_eq!(
                    s["session_duration_p50_seconds"].as_f64().unwrap(),
                    rank(0.5) as f64 / 1000.0
                );
                assert_eq!(
                    s["session_duration_p90_seconds"].as_f64().unwrap(),
                    rank(0.9) as f64 / 1000.0
                );
            }
        }
    }
}

#[test]
fn replay_breaks_down_by_site_and_channel() {
    let (views, last) = read_fixture();
    let snaps = replay(&["--windows", "7d", "--at", &(last + TIMEOUT_MS).to_string()]);
    let end = (last + TIMEOUT_MS).div_euclid(7 * 86_400_000 / 60) * (7 * 86_400_000 / 60);
    let start = end - 7 * 86_400_000;
    for dim in ["site", "channel"] {
        let mut want: BTreeMap<String, u64> = BTreeMap::new();
        for v in views.iter().filter(|v| v.time >= start && v.time < end) {
            let key = if dim == "site" { &v.site } else { &v.channel };
            *want.entry(key.clone()).or_default() += 1;
        }
        let got: BTreeMap<String, u64> = snaps
            .iter()
            .filter(|s| s["dimension"] == dim && s["page_views"].as_u64().unwrap() > 0)
            .map(|s| {
                (
                    s["dimension_value"].as_str().unwrap().to_string(),
                    s["page_views"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(got, want, "{dim}");
    }
}

#[test]
fn replay_reports_bad_files_and_flags_clearly() {
    let out = Command::new(env!("CARGO_BIN_EXE_engaged"))
        .args(["replay", "Cargo.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Cargo.toml") && err.contains("not an Avro"),
        "{err}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_engaged"))
        .args(["replay", FIXTURE, "--windows", "1h/7m"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`windows`") && err.contains("1h/7m"), "{err}");
}

/// Writes `events` as an object container file with apache-avro's writer (the
/// union writer schema, a block every 250 records) and returns its path.
fn container_file(
    dir: &std::path::Path,
    name: &str,
    codec: apache_avro::Codec,
    events: &[engaged::event::Event],
) -> std::path::PathBuf {
    use engaged::decode::encode;
    let schema = apache_avro::Schema::parse_str(&encode::union_schema_json()).unwrap();
    let path = dir.join(name);
    let file = std::fs::File::create(&path).unwrap();
    // Blocks only where this loop flushes (the default starts one every 16 kB).
    let mut w = apache_avro::Writer::builder()
        .schema(&schema)
        .writer(file)
        .codec(codec)
        .block_size(1 << 24)
        .build()
        .unwrap();
    let reader = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
        .build()
        .unwrap();
    for (i, e) in events.iter().enumerate() {
        let datum = encode::union_datum(e);
        let v = reader.read_value(&mut datum.as_slice()).unwrap();
        w.append_value_ref(&v).unwrap();
        if (i + 1) % 250 == 0 {
            w.flush().unwrap();
        }
    }
    w.flush().unwrap();
    path
}

fn replay_lib(path: &std::path::Path, generic_decode: bool) -> engaged::replay::ReplaySummary {
    let opts = engaged::replay::ReplayOptions {
        files: vec![path.to_path_buf()],
        at: None,
        progress: false,
        dead_letter: None,
        customer_risks: None,
        generic_decode,
    };
    engaged::replay::replay(
        engaged::state::CoreConfig::default(),
        &opts,
        &mut Vec::new(),
    )
    .expect("replays")
}

/// The fast block reader replays exactly what apache-avro's reader does, null
/// or deflate; a datum that does not decode costs the rest of its block (each
/// record rejected with a reason), not the file.
#[test]
fn the_fast_block_reader_replays_like_apache_avro() {
    use engaged::demo::generator::{DEFAULT_START, Generator, GeneratorConfig};
    let dir = tempfile::tempdir().unwrap();
    let mut g = Generator::new(GeneratorConfig::default());
    let events: Vec<_> = g
        .advance_to(DEFAULT_START + 12 * 3_600_000)
        .into_iter()
        .take(3_000)
        .collect();
    assert_eq!(events.len(), 3_000);
    for (name, codec) in [
        ("null.avro", apache_avro::Codec::Null),
        (
            "deflate.avro",
            apache_avro::Codec::Deflate(Default::default()),
        ),
    ] {
        let path = container_file(dir.path(), name, codec, &events);
        let (fast, generic) = (replay_lib(&path, false), replay_lib(&path, true));
        assert_eq!(fast.consumed, 3_000, "{name}");
        assert_eq!(
            (fast.accepted, &fast.rejected),
            (generic.accepted, &generic.rejected),
            "{name}"
        );
        assert_eq!(fast.snapshots, generic.snapshots, "{name}");
        assert!(fast.snapshots.iter().any(|s| s.page_views > 0), "{name}");
    }
    // Record 260 (the second block's eleventh) gets an event id that is not UTF-8.
    let path = container_file(
        dir.path(),
        "damaged.avro",
        apache_avro::Codec::Null,
        &events,
    );
    let mut bytes = std::fs::read(&path).unwrap();
    let datum = engaged::decode::encode::union_datum(&events[260]);
    let at: Vec<usize> = bytes
        .windows(datum.len())
        .enumerate()
        .filter(|(_, w)| *w == datum.as_slice())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "the record is unique in the file");
    let id = events[260].event_id().as_bytes();
    let in_datum = datum.windows(id.len()).position(|w| w == id).unwrap();
    bytes[at[0] + in_datum] = 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let damaged = replay_lib(&path, false);
    assert_eq!(damaged.consumed, 3_000);
    // Records 260..500 are lost with their block; every other one is applied as before.
    assert_eq!(damaged.rejected.get("undecodable"), Some(&240));
    let good = replay_lib(
        &container_file(dir.path(), "again.avro", apache_avro::Codec::Null, &events),
        false,
    );
    let others: Vec<_> = events[..260]
        .iter()
        .chain(&events[500..])
        .cloned()
        .collect();
    let without = replay_lib(
        &container_file(
            dir.path(),
            "without.avro",
            apache_avro::Codec::Null,
            &others,
        ),
        false,
    );
    assert_eq!(damaged.accepted, without.accepted);
    assert_eq!(damaged.snapshots, without.snapshots);
    assert!(good.accepted > damaged.accepted);
}

/// A replay decodes on its own thread, a few chunks ahead of the apply loop:
/// files of several chunks replay exactly as one file of the same records,
/// a rejected record is written with its own file and index, and a dead-letter
/// file that cannot be written ends the replay with an error (no hang).
#[test]
fn files_of_several_chunks_replay_like_one_file() {
    use engaged::demo::generator::{DEFAULT_START, Generator, GeneratorConfig};
    use engaged::replay::{ReplayError, ReplayOptions, replay};
    let dir = tempfile::tempdir().unwrap();
    let mut g = Generator::new(GeneratorConfig::default());
    let mut events: Vec<_> = g
        .advance_to(DEFAULT_START + 72 * 3_600_000)
        .into_iter()
        .take(14_000)
        .collect();
    assert_eq!(events.len(), 14_000);
    // Record 9,000 repeats record 8,999: a duplicate, the second file's 4,000th record.
    events[9_000] = events[8_999].clone();
    let (a, b) = events.split_at(5_000);
    let null = apache_avro::Codec::Null;
    let whole = container_file(dir.path(), "whole.avro", null, &events);
    let first = container_file(dir.path(), "first.avro", null, a);
    let second = container_file(dir.path(), "second.avro", null, b);
    let run = |files: &[&std::path::Path], dead_letter: Option<&std::path::Path>| {
        let opts = ReplayOptions {
            files: files.iter().map(|p| p.to_path_buf()).collect(),
            at: None,
            progress: false,
            dead_letter: dead_letter.map(|p| p.to_path_buf()),
            customer_risks: None,
            generic_decode: false,
        };
        replay(
            engaged::state::CoreConfig::default(),
            &opts,
            &mut Vec::new(),
        )
    };
    let dead = dir.path().join("dead.jsonl");
    let one = run(&[&whole], None).expect("replays");
    let two = run(&[&first, &second], Some(&dead)).expect("replays");
    assert_eq!((one.consumed, two.consumed), (14_000, 14_000));
    assert_eq!((one.accepted, &one.rejected), (two.accepted, &two.rejected));
    assert!(two.rejected.get("duplicate").is_some_and(|n| *n >= 1));
    assert_eq!(one.snapshots, two.snapshots);
    assert!(one.snapshots.iter().any(|s| s.page_views > 0));
    let lines: Vec<Json> = std::fs::read_to_string(&dead)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, two.rejected.values().sum::<u64>());
    let second_name = second.display().to_string();
    assert!(
        lines.iter().any(|l| l["file"] == second_name.as_str()
            && l["index"] == 4_000
            && l["reason"] == "duplicate"),
        "{lines:?}"
    );
    // Writes to /dev/full fail (ENOSPC): the first dead letter ends the replay.
    let full = run(&[&first, &second], Some(std::path::Path::new("/dev/full")));
    assert!(matches!(full, Err(ReplayError::Output(_))), "{full:?}");
}

/// (customer, event time) of every customer activity in the fixture (SPEC §3:
/// every event carrying a `customer_id` except email SENT, DELIVERED and
/// BOUNCED), leaving out the records engaged must reject (the fixture's only
/// invalid records are ORDERs in USD; EUR is the default currency).
fn read_activity() -> Vec<(String, i64)> {
    let file = std::fs::File::open(FIXTURE).unwrap();
    let mut out = vec![];
    for v in apache_avro::Reader::new(file).unwrap() {
        let v = match v.unwrap() {
            Value::Union(_, inner) => *inner,
            other => other,
        };
        let Value::Record(fields) = v else {
            panic!("not a record")
        };
        let has = |name: &str| fields.iter().any(|(n, _)| n == name);
        if has("currency") && string(field(&fields, "currency")).as_deref() != Some("EUR") {
            continue;
        }
        if has("message_id")
            && let Value::Enum(_, t) = field(&fields, "type")
            && ["SENT", "DELIVERED", "BOUNCED"].contains(&t.as_str())
        {
            continue;
        }
        if !has("customer_id") {
            continue;
        }
        if let Some(c) = string(field(&fields, "customer_id")) {
            out.push((c, long(field(&fields, "event_time"))));
        }
    }
    out
}

/// Issue "Metrics users can trust": with a churn horizon shorter than the
/// windows, customers who become active and churn inside a window used to be
/// divided by the customers active at its start (a churn rate of 2642% on a
/// 150-day stream). The churn rate is now the start cohort's: recomputed here
/// from the SPEC text, and at most 1 in every window and row.
#[test]
fn churn_rate_is_the_start_cohorts_and_never_exceeds_one() {
    const H: i64 = 24 * 3_600_000;
    let snaps = replay(&["--churn-horizon", "1d", "--windows", "1h,6h,24h,48h"]);
    let mut by_customer: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (c, t) in read_activity() {
        by_customer.entry(c).or_default().push(t);
    }
    let (_, last) = read_fixture();
    let mut exceeded_before = false;
    for (window, length) in [("1h", 1), ("6h", 6), ("24h", 24), ("48h", 48)] {
        let length = length * 3_600_000;
        let bucket = length / 60;
        let end = last.div_euclid(bucket) * bucket;
        let start = end - length;
        let (mut at_start, mut lost, mut churned) = (0, 0, 0);
        for times in by_customer.values_mut() {
            times.sort();
            // Churn instants: a horizon after an activity with none in the next horizon.
            let churns: Vec<i64> = times
                .iter()
                .enumerate()
                .filter(|(i, t)| times.get(i + 1).is_none_or(|n| n - *t >= H))
                .map(|(_, t)| t + H)
                .filter(|c| (start..end).contains(c))
                .collect();
            churned += churns.len() as i64;
            let active_at_start = times.iter().any(|t| (start - H..start).contains(t));
            if active_at_start {
                at_start += 1;
                if !churns.is_empty() {
                    lost += 1;
                }
            }
        }
        let s = all_dim(&snaps, window);
        assert_eq!(s["customers_at_window_start"], at_start, "{window}");
        assert_eq!(s["lost_customers"], lost, "{window}");
        assert_eq!(s["churned_customers"], churned, "{window}");
        assert!(at_start > 0, "{window}: the start cohort is not empty");
        let rate = s["churn_rate"].as_f64().expect("a churn rate");
        assert!(
            (rate - lost as f64 / at_start as f64).abs() < 1e-12,
            "{window}: {rate}"
        );
        exceeded_before |= churned > at_start;
    }
    assert!(
        exceeded_before,
        "some window has more churns than customers at its start (the old ratio > 1)"
    );
    for s in &snaps {
        let rate = &s["churn_rate"];
        assert!(
            rate.is_null() || rate.as_f64().is_some_and(|r| (0.0..=1.0).contains(&r)),
            "{s}"
        );
    }
}
