//! HTTP client of a Confluent-compatible Schema Registry: `GET /schemas/ids/{id}`, with time-outs, retries and a cache.
//!
//! One lookup is at most `1 + max_retries` attempts, each bounded by `timeout`, with
//! `backoff × 2ⁿ` (at most 10 s) between them: a connection error, a time-out, a 5xx,
//! a 408 or a 429 is tried again; any other answer is final (a 404 is the registry
//! saying the id does not exist). Schemas are cached by id for ever (an id never
//! changes its schema in a Confluent registry); failures for `negative_cache_ttl`, so
//! that a flood of records with a bad id does not hammer the registry. The basic-auth
//! password is sent in the `Authorization` header only (marked sensitive) and appears
//! in no error, log line or `Debug` output.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use reqwest::StatusCode;
use reqwest::header::ACCEPT;

use crate::config::SchemaRegistryConfig;

/// Answers larger than this are refused (a schema is a few KiB).
const MAX_ANSWER_BYTES: usize = 4 << 20;
/// Past this many cached failures, expired ones are dropped when one is added.
const PRUNE_FAILURES_ABOVE: usize = 4096;
/// What the registry's REST API answers with (Confluent's clients send the same).
const ACCEPT_REGISTRY: &str = "application/vnd.schemaregistry.v1+json, \
                               application/vnd.schemaregistry+json; qs=0.9, application/json; qs=0.5";

/// Why the client could not be built: who must act is the operator.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid configuration: `schema_registry.ca_file` = {path:?}: {why}")]
    CaFile { path: String, why: String },
    #[error("schema registry HTTP client: {0}")]
    Client(String),
}

/// Why a schema id has no schema (for now). `Display` names the registry, never
/// the id (the caller does) nor a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// 404: the registry has no schema with this id (`40403`).
    #[error("schema registry {url} answered 404 ({detail})")]
    NotFound { url: String, detail: String },
    /// Another 4xx (401, 403, …): asking again will not help.
    #[error("schema registry {url} answered {status} ({detail}){hint}")]
    Refused {
        url: String,
        status: u16,
        detail: String,
        hint: &'static str,
    },
    /// Every attempt failed with a connection error, a time-out, a 5xx, 408 or 429.
    #[error("schema registry {url} unreachable after {attempts} attempt(s): {last}")]
    Unreachable {
        url: String,
        attempts: u32,
        last: String,
    },
    /// A schema that is not Avro (`schemaType` `PROTOBUF`, `JSON`).
    #[error("schema registry {url} returned a {schema_type} schema; engaged reads Avro only")]
    NotAvro { url: String, schema_type: String },
    /// A schema with `references` to other subjects' schemas.
    #[error(
        "schema registry {url} returned a schema with references to other subjects' schemas, \
         which engaged does not resolve"
    )]
    References { url: String },
    /// A 2xx answer without a schema in it.
    #[error("schema registry {url} answered without a readable schema: {why}")]
    BadAnswer { url: String, why: String },
}

/// One lookup's result, and whether it came from the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub schema: Result<Arc<str>, LookupError>,
    /// False when the registry was asked (once, with its retries).
    pub cached: bool,
}

enum Cached {
    Found(Arc<str>),
    Failed { error: LookupError, until: Instant },
}

/// A Schema Registry client; clones share the connection pool and the cache.
#[derive(Clone)]
pub struct RegistryClient {
    http: reqwest::Client,
    config: Arc<SchemaRegistryConfig>,
    cache: Arc<Mutex<HashMap<u32, Cached>>>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What one attempt ended with.
enum Attempt {
    Done(Result<Arc<str>, LookupError>),
    /// Worth another attempt; why this one failed.
    Retry(String),
}

impl RegistryClient {
    /// Builds the HTTP client (reads `ca_file`; connects to nothing yet).
    pub fn new(config: &SchemaRegistryConfig) -> Result<RegistryClient, RegistryError> {
        // rustls needs a process-wide crypto provider: ring (see Cargo.toml). Already
        // installed (a second client) is fine. rustls 0.23.48 deprecates ring's for
        // lacking post-quantum key exchange; aws-lc-rs has it, at about 25 s more of
        // C build per clean build here (COMMIT_NOTES.md). Classic X25519/ECDHE still
        // protects the session; what travels is writer schemas and the password.
        #[allow(deprecated)]
        let provider = rustls::crypto::ring::default_provider();
        let _ = provider.install_default();
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .user_agent(concat!("engaged/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &config.ca_file {
            let ca_error = |why: String| RegistryError::CaFile {
                path: path.display().to_string(),
                why,
            };
            let pem = std::fs::read(path)
                .map_err(|e| ca_error(format!("a readable PEM file of CA certificates ({e})")))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| ca_error(format!("a PEM file of CA certificates ({e})")))?;
            if certs.is_empty() {
                return Err(ca_error(
                    "a PEM file of CA certificates (it holds none)".into(),
                ));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| RegistryError::Client(innermost(&e)))?;
        Ok(RegistryClient {
            http,
            config: Arc::new(config.clone()),
            cache: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// The registry's base URL (as configured; it holds no credentials).
    pub fn url(&self) -> &str {
        &self.config.url
    }

    fn cache(&self) -> MutexGuard<'_, HashMap<u32, Cached>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writer schema (JSON text) of Confluent schema id `id`: from the cache, or
    /// from the registry (one lookup with its retries; at most
    /// [`SchemaRegistryConfig::worst_case_wait`]).
    pub async fn schema(&self, id: u32) -> Answer {
        let now = Instant::now();
        match self.cache().get(&id) {
            Some(Cached::Found(text)) => {
                return Answer {
                    schema: Ok(text.clone()),
                    cached: true,
                };
            }
            Some(Cached::Failed { error, until }) if *until > now => {
                return Answer {
                    schema: Err(error.clone()),
                    cached: true,
                };
            }
            _ => {}
        }
        let schema = self.fetch(id).await;
        let mut cache = self.cache();
        match &schema {
            Ok(text) => {
                cache.insert(id, Cached::Found(text.clone()));
            }
            Err(error) => {
                let ttl = self.config.negative_cache_ttl;
                if !ttl.is_zero() {
                    if cache.len() >= PRUNE_FAILURES_ABOVE {
                        let now = Instant::now();
                        cache.retain(
                            |_, c| !matches!(c, Cached::Failed { until, .. } if *until <= now),
                        );
                    }
                    cache.insert(
                        id,
                        Cached::Failed {
                            error: error.clone(),
                            until: Instant::now() + ttl,
                        },
                    );
                }
            }
        }
        Answer {
            schema,
            cached: false,
        }
    }

    /// `GET {url}/schemas/ids/{id}` with its retries.
    async fn fetch(&self, id: u32) -> Result<Arc<str>, LookupError> {
        let url = format!("{}/schemas/ids/{id}", self.config.url);
        let attempts = self.config.max_retries + 1;
        let mut last = String::new();
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(self.config.backoff_before(attempt - 1)).await;
            }
            match self.attempt(&url).await {
                Attempt::Done(result) => return result,
                Attempt::Retry(why) => {
                    tracing::debug!(schema_id = id, attempt = attempt + 1, error = %why, "schema registry lookup failed");
                    last = why;
                }
            }
        }
        Err(LookupError::Unreachable {
            url: self.config.url.clone(),
            attempts,
            last,
        })
    }

    async fn attempt(&self, url: &str) -> Attempt {
        let mut request = self.http.get(url).header(ACCEPT, ACCEPT_REGISTRY);
        if let Some(auth) = &self.config.auth {
            request = request.basic_auth(auth.username.expose(), Some(auth.password.expose()));
        }
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                format!("no answer within {:?}", self.config.timeout)
            } else if e.is_connect() {
                format!("cannot connect: {}", innermost(&e))
            } else {
                innermost(&e)
            }
        };
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => return Attempt::Retry(transport(e)),
        };
        let status = response.status();
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_ANSWER_BYTES => {
                    body.extend_from_slice(&chunk)
                }
                Ok(Some(_)) => {
                    return Attempt::Done(Err(self.bad_answer(format!(
                        "an answer larger than {} MiB",
                        MAX_ANSWER_BYTES >> 20
                    ))));
                }
                Ok(None) => break,
                Err(e) => return Attempt::Retry(transport(e)),
            }
        }
        let url = self.config.url.clone();
        if status.is_success() {
            return Attempt::Done(self.schema_of(&body));
        }
        let detail = detail(status, &body);
        match status {
            StatusCode::NOT_FOUND => Attempt::Done(Err(LookupError::NotFound { url, detail })),
            StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT => {
                Attempt::Retry(format!("answered {} ({detail})", status.as_u16()))
            }
            s if s.is_server_error() => {
                Attempt::Retry(format!("answered {} ({detail})", status.as_u16()))
            }
            s => Attempt::Done(Err(LookupError::Refused {
                url,
                status: s.as_u16(),
                detail,
                hint: match s {
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                        "; check `schema_registry.username` and `schema_registry.password`"
                    }
                    _ => "",
                },
            })),
        }
    }

    fn bad_answer(&self, why: String) -> LookupError {
        LookupError::BadAnswer {
            url: self.config.url.clone(),
            why,
        }
    }

    /// The schema text of a `GET /schemas/ids/{id}` answer:
    /// `{"schema": "...", "schemaType"?: "AVRO", "references"?: [...]}`.
    fn schema_of(&self, body: &[u8]) -> Result<Arc<str>, LookupError> {
        let url = self.config.url.clone();
        let json: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| self.bad_answer(format!("not JSON ({e})")))?;
        let schema_type = json.get("schemaType").and_then(|t| t.as_str());
        if let Some(t) = schema_type.filter(|t| !t.eq_ignore_ascii_case("AVRO")) {
            return Err(LookupError::NotAvro {
                url,
                schema_type: printable(t, 40),
            });
        }
        let references = json.get("references").and_then(|r| r.as_array());
        if references.is_some_and(|r| !r.is_empty()) {
            return Err(LookupError::References { url });
        }
        match json.get("schema").and_then(|s| s.as_str()) {
            Some(text) => Ok(Arc::from(text)),
            None => Err(self.bad_answer("no `schema` string in it".into())),
        }
    }
}

/// The registry's own words for a failure: `40403 Schema 7 not found` from its JSON
/// error body, or the start of the body, or the status's name.
fn detail(status: StatusCode, body: &[u8]) -> String {
    let reason = || status.canonical_reason().unwrap_or("no reason").to_string();
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(json) => {
            let code = json.get("error_code").and_then(|c| c.as_i64());
            let message = json.get("message").and_then(|m| m.as_str());
            match (code, message) {
                (Some(c), Some(m)) => printable(&format!("{c} {m}"), 200),
                (None, Some(m)) => printable(m, 200),
                (Some(c), None) => c.to_string(),
                (None, None) => reason(),
            }
        }
        Err(_) if body.is_empty() => reason(),
        Err(_) => printable(&String::from_utf8_lossy(body), 200),
    }
}

/// `s` on one line, at most `max` characters: it ends up in a log line and in a
/// dead letter's `engaged.error` header.
fn printable(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out.trim().to_string()
}

/// The innermost cause of an error (`Connection refused (os error 111)`), without
/// reqwest's wrapping (which names the URL, already in our message).
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    printable(&cause.to_string(), 300)
}
