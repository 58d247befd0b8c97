//! The client against a scripted HTTP server on 127.0.0.1: retries, back-off,
//! time-outs, the caches, basic auth; and `prepare` teaching a pipeline's decoder.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::config::registry::{BasicAuth, Secret};
use crate::config::{RawConfig, SchemaRegistryConfig};
use crate::decode::{DecoderConfig, encode};
use crate::event::{Event, PageView};
use crate::state::{Engine, RejectReason, TopicPartition};

/// What the scripted server does with one request.
#[derive(Clone)]
enum Reply {
    /// Status and JSON body.
    Answer(u16, &'static str),
    /// Reads the request and never answers.
    Hang,
}

/// An HTTP/1.1 server answering each request with the next reply of its script
/// (the last one again once the script is used up), recording every request head.
struct Scripted {
    url: String,
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    async fn start(script: &[Reply]) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (seen, script) = (heads.clone(), script.to_vec());
        let task = tokio::spawn(async move {
            let mut n = 0;
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let reply = script[n.min(script.len() - 1)].clone();
                n += 1;
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.ends_with(b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => head.extend_from_slice(&buf[..k]),
                        }
                    }
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&head).into_owned());
                    match reply {
                        Reply::Hang => tokio::time::sleep(Duration::from_secs(60)).await,
                        Reply::Answer(status, body) => {
                            let answer = format!(
                                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
                                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = socket.write_all(answer.as_bytes()).await;
                        }
                    }
                });
            }
        });
        Scripted { url, heads, task }
    }

    fn requests(&self) -> usize {
        self.heads.lock().unwrap().len()
    }
}

fn config(url: &str) -> SchemaRegistryConfig {
    SchemaRegistryConfig {
        url: url.to_string(),
        timeout: Duration::from_secs(5),
        max_retries: 3,
        backoff: Duration::from_millis(20),
        negative_cache_ttl: Duration::from_secs(30),
        auth: None,
        ca_file: None,
    }
}

const SCHEMA: &str = r#"{"schema": "{\"type\": \"string\"}"}"#;

#[tokio::test]
async fn a_schema_is_fetched_once_and_then_served_from_the_cache() {
    let server = Scripted::start(&[Reply::Answer(200, SCHEMA)]).await;
    let client = RegistryClient::new(&config(&server.url)).unwrap();
    let first = client.schema(7).await;
    assert_eq!(first.schema.as_deref(), Ok(r#"{"type": "string"}"#));
    assert!(!first.cached);
    let second = client.schema(7).await;
    assert_eq!(second.schema.as_deref(), Ok(r#"{"type": "string"}"#));
    assert!(second.cached);
    assert_eq!(server.requests(), 1);
    let head = server.heads.lock().unwrap()[0].to_ascii_lowercase();
    assert!(
        head.starts_with("get /schemas/ids/7 http/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.contains("accept: application/vnd.schemaregistry.v1+json"),
        "{head}"
    );
    assert!(!head.contains("authorization"), "{head}");
}

#[tokio::test]
async fn server_errors_and_429_are_retried_with_a_doubling_backoff() {
    let server = Scripted::start(&[
        Reply::Answer(503, r#"{"error_code": 50003, "message": "busy"}"#),
        Reply::Answer(429, ""),
        Reply::Answer(200, SCHEMA),
    ])
    .await;
    let mut cfg = config(&server.url);
    cfg.backoff = Duration::from_millis(100);
    let client = RegistryClient::new(&cfg).unwrap();
    let started = Instant::now();
    let answer = client.schema(3).await;
    assert!(answer.schema.is_ok(), "{answer:?}");
    assert_eq!(server.requests(), 3);
    // Pauses of 100 ms, then 200 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_registry_failing_every_attempt_is_unreachable_after_the_retries() {
    let server = Scripted::start(&[Reply::Answer(500, "internal trouble")]).await;
    let client = RegistryClient::new(&config(&server.url)).unwrap();
    let answer = client.schema(4).await;
    let e = answer.schema.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "schema registry {} unreachable after 4 attempt(s): answered 500 (internal trouble)",
            server.url
        )
    );
    assert_eq!(server.requests(), 4, "1 + max_retries attempts");
    assert_eq!(Outcome::of(&e), Outcome::Unreachable);
}

#[tokio::test]
async fn not_found_is_final_and_remembered_for_the_negative_cache_ttl() {
    let server = Scripted::start(&[Reply::Answer(
        404,
        r#"{"error_code": 40403, "message": "Schema 9 not found"}"#,
    )])
    .await;
    let mut cfg = config(&server.url);
    cfg.negative_cache_ttl = Duration::from_millis(300);
    let client = RegistryClient::new(&cfg).unwrap();
    let e = client.schema(9).await.schema.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "schema registry {} answered 404 (40403 Schema 9 not found)",
            server.url
        )
    );
    assert_eq!(server.requests(), 1, "a 404 is not retried");
    for _ in 0..10 {
        let again = client.schema(9).await;
        assert!(again.cached && again.schema == Err(e.clone()));
    }
    assert_eq!(server.requests(), 1, "remembered: not asked again");
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(
        !client.schema(9).await.cached,
        "asked again once the ttl passed"
    );
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn a_zero_negative_cache_ttl_asks_every_time() {
    let server = Scripted::start(&[Reply::Answer(404, "")]).await;
    let mut cfg = config(&server.url);
    cfg.negative_cache_ttl = Duration::ZERO;
    let client = RegistryClient::new(&cfg).unwrap();
    for _ in 0..3 {
        let answer = client.schema(1).await;
        assert!(!answer.cached);
        let e = answer.schema.unwrap_err().to_string();
        assert!(e.ends_with("answered 404 (Not Found)"), "{e}");
    }
    assert_eq!(server.requests(), 3);
}

#[tokio::test]
async fn a_refused_connection_is_unreachable_and_each_attempt_is_bounded() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let mut cfg = config(&url);
    cfg.max_retries = 2;
    let client = RegistryClient::new(&cfg).unwrap();
    let e = client.schema(5).await.schema.unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "schema registry {url} unreachable after 3 attempt(s): cannot connect: "
        )),
        "{e}"
    );
    assert!(e.to_ascii_lowercase().contains("refused"), "{e}");

    let server = Scripted::start(&[Reply::Hang]).await;
    let mut cfg = config(&server.url);
    cfg.timeout = Duration::from_millis(200);
    cfg.max_retries = 1;
    let client = RegistryClient::new(&cfg).unwrap();
    let started = Instant::now();
    let e = client.schema(6).await.schema.unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "schema registry {} unreachable after 2 attempt(s): no answer within 200ms",
            server.url
        )
    );
    assert_eq!(server.requests(), 2);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(cfg.worst_case_wait() == Duration::from_millis(420));
}

#[tokio::test]
async fn schemas_that_are_not_avro_or_have_references_are_refused() {
    let server = Scripted::start(&[
        Reply::Answer(
            200,
            r#"{"schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF"}"#,
        ),
        Reply::Answer(
            200,
            r#"{"schema": "{}", "references": [{"name": "x", "subject": "y", "version": 1}]}"#,
        ),
        Reply::Answer(
            200,
            r#"{"schema": "{}", "schemaType": "AVRO", "references": []}"#,
        ),
        Reply::Answer(200, "<html>proxy login</html>"),
    ])
    .await;
    let client = RegistryClient::new(&config(&server.url)).unwrap();
    let e = client.schema(1).await.schema.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "schema registry {} returned a PROTOBUF schema; engaged reads Avro only",
            server.url
        )
    );
    assert_eq!(Outcome::of(&e), Outcome::Unusable);
    let e = client.schema(2).await.schema.unwrap_err();
    assert!(matches!(e, LookupError::References { .. }), "{e}");
    assert_eq!(client.schema(3).await.schema.as_deref(), Ok("{}"));
    let e = client.schema(4).await.schema.unwrap_err().to_string();
    assert!(
        e.contains("answered without a readable schema: not JSON"),
        "{e}"
    );
}

const USER: &str = "engaged-reader";
const PASSWORD: &str = "S3cr3t-registry-canary";

#[tokio::test]
async fn basic_auth_is_sent_and_the_password_is_never_shown() {
    let server = Scripted::start(&[Reply::Answer(
        401,
        r#"{"error_code": 401, "message": "Unauthorized"}"#,
    )])
    .await;
    let mut cfg = config(&server.url);
    cfg.auth = Some(BasicAuth {
        username: Secret::new(USER),
        password: Secret::new(PASSWORD),
    });
    let client = RegistryClient::new(&cfg).unwrap();
    let e = client.schema(8).await.schema.unwrap_err();
    let head = server.heads.lock().unwrap()[0].clone();
    // base64("engaged-reader:S3cr3t-registry-canary")
    assert!(
        head.to_ascii_lowercase()
            .contains("authorization: basic zw5nywdlzc1yzwfkzxi6uznjcjn0lxjlz2lzdhj5lwnhbmfyeq=="),
        "{head}"
    );
    assert_eq!(server.requests(), 1, "a 401 is not retried");
    assert_eq!(Outcome::of(&e), Outcome::Refused);
    let shown = [
        e.to_string(),
        format!("{e:?}"),
        format!("{client:?}"),
        format!("{cfg:?}"),
    ];
    for s in shown {
        assert!(!s.contains(PASSWORD) && !s.contains(USER), "{s}");
    }
    assert!(e.to_string().contains(
        "answered 401 (401 Unauthorized); check `schema_registry.username` and \
         `schema_registry.password`"
    ));
}

fn pipeline() -> Pipeline {
    let cfg = DecoderConfig::default();
    let core = RawConfig::default().validate().unwrap().core;
    Pipeline::new(
        Decoder::new(&cfg).unwrap(),
        Engine::new(core),
        Arc::new(Telemetry::new()),
        None,
        60_000,
    )
}

fn view(id: &str) -> Event {
    Event::PageView(PageView {
        event_id: id.into(),
        event_time: 1_700_000_000_000,
        visitor_id: "v".into(),
        customer_id: None,
        site: "shop".into(),
        page: "/".into(),
        referrer: None,
        channel: None,
    })
}

/// `GET /schemas/ids/{id}` answers of a registry holding PageView under id 1, a
/// record that is not an event under id 2, and nothing else.
fn registry_answer(id: u32) -> Reply {
    match id {
        1 => Reply::Answer(200, PAGE_VIEW_ANSWER),
        2 => Reply::Answer(
            200,
            r#"{"schema": "{\"type\": \"record\", \"name\": \"Invoice\", \"fields\": []}"}"#,
        ),
        _ => Reply::Answer(
            404,
            r#"{"error_code": 40403, "message": "Schema not found"}"#,
        ),
    }
}

/// `schemas/PageView.avsc` as a registry returns it (a JSON string in a JSON object).
const PAGE_VIEW_ANSWER: &str = concat!(
    r#"{"schema": "{\"type\":\"record\",\"name\":\"PageView\",\"namespace\":\"engaged.v1\","#,
    r#"\"fields\":[{\"name\":\"event_id\",\"type\":\"string\"},"#,
    r#"{\"name\":\"event_time\",\"type\":{\"type\":\"long\",\"logicalType\":\"timestamp-millis\"}},"#,
    r#"{\"name\":\"visitor_id\",\"type\":\"string\"},"#,
    r#"{\"name\":\"customer_id\",\"type\":[\"null\",\"string\"],\"default\":null},"#,
    r#"{\"name\":\"site\",\"type\":\"string\"},{\"name\":\"page\",\"type\":\"string\"},"#,
    r#"{\"name\":\"referrer\",\"type\":[\"null\",\"string\"],\"default\":null},"#,
    r#"{\"name\":\"channel\",\"type\":[\"null\",\"string\"],\"default\":null}]}"}"#
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_teaches_the_decoder_found_ids_and_explains_the_others() {
    // One scripted server per id: the script cannot look at the path.
    let mut servers = HashMap::new();
    for id in [1u32, 2, 3] {
        servers.insert(id, Scripted::start(&[registry_answer(id)]).await);
    }
    let pipeline = pipeline();
    let tp = TopicPartition::new("pageviews", 0);
    let telemetry = Telemetry::new();
    for id in [1u32, 2, 3] {
        let registry = SchemaRegistry::new(&config(&servers[&id].url), &telemetry).unwrap();
        let payload = encode::confluent(id, &view(&format!("e{id}")));
        for round in 0..2 {
            registry
                .prepare(&pipeline, [("pageviews", Some(payload.as_slice()))])
                .await;
            let result = pipeline.handle_records(&tp, [Some(payload.as_slice())], 0);
            let url = &servers[&id].url;
            match id {
                // Decoded both times: the second is the same event again.
                1 if round == 0 => assert!(result[0].is_ok(), "{result:?}"),
                1 => assert_eq!(
                    result[0].as_ref().unwrap_err().reason,
                    RejectReason::Duplicate
                ),
                2 => {
                    let r = result[0].as_ref().unwrap_err();
                    assert_eq!(r.reason, RejectReason::Undecodable);
                    assert!(
                        r.message.starts_with(&format!(
                            "unknown Confluent schema id 2: schema registry {url} returned a \
                             schema engaged cannot use: writer schema for schema id 2: is record \
                             Invoice; expected a record named PageView"
                        )),
                        "{}",
                        r.message
                    );
                }
                _ => assert_eq!(
                    result[0].as_ref().unwrap_err().message,
                    format!(
                        "unknown Confluent schema id 3: schema registry {url} answered 404 \
                         (40403 Schema not found)"
                    )
                ),
            }
        }
        assert_eq!(servers[&id].requests(), 1, "id {id}: asked once");
    }
    let count = |o: &str| {
        telemetry
            .schema_registry_lookups
            .with_label_values(&[o])
            .get()
    };
    assert_eq!(
        (count("found"), count("unusable"), count("not_found")),
        (1, 1, 1)
    );
    assert!(pipeline.decoder().knows_schema_id(1));
    assert!(!pipeline.decoder().knows_schema_id(2));
}

#[tokio::test]
async fn a_configured_schema_id_is_never_looked_up_and_a_plain_topic_is_skipped() {
    let server = Scripted::start(&[Reply::Answer(500, "")]).await;
    let pv = crate::event::EventKind::PageView.schema_json();
    let mut cfg = DecoderConfig::default();
    cfg.schema_ids.insert(1, pv.to_string());
    cfg.topic_schemas.insert("plain".into(), pv.to_string());
    let core = RawConfig::default().validate().unwrap().core;
    let telemetry = Arc::new(Telemetry::new());
    let pipeline = Pipeline::new(
        Decoder::new(&cfg).unwrap(),
        Engine::new(core),
        telemetry.clone(),
        None,
        60_000,
    );
    let registry = SchemaRegistry::new(&config(&server.url), &telemetry).unwrap();
    let framed = encode::confluent(1, &view("a"));
    // On a topic with a plain writer schema, a leading 0x00 is no frame to look up.
    let unknown_on_plain = encode::confluent(77, &view("b"));
    registry
        .prepare(
            &pipeline,
            [
                ("pageviews", Some(framed.as_slice())),
                ("plain", Some(unknown_on_plain.as_slice())),
            ],
        )
        .await;
    assert_eq!(server.requests(), 0);
    let tp = TopicPartition::new("pageviews", 0);
    assert!(pipeline.handle_records(&tp, [Some(framed.as_slice())], 0)[0].is_ok());
}
