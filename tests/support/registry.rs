//! A small Confluent-compatible Schema Registry on 127.0.0.1, for the tests: the
//! endpoints engaged calls (`GET /schemas/ids/{id}`) and those Confluent's clients
//! call to register and look up schemas (`POST /subjects/{subject}/versions`,
//! `POST /subjects/{subject}`, `GET /subjects[/{subject}/versions[/{version}]]`,
//! `GET /config`, `GET /schemas/types`), as documented in Confluent's API reference.
//! Every request is recorded (method, path, `Authorization` header). It runs on its
//! own thread and runtime, so sync and async tests alike can use it, and stops when
//! dropped. [`TestRegistry::start_tls`] serves https with a certificate made by
//! [`TestCa`] (the `openssl` command line).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// One request the registry answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
}

/// A registered schema.
#[derive(Debug, Clone)]
struct Stored {
    subject: String,
    version: u32,
    schema: String,
    schema_type: Option<String>,
}

#[derive(Default)]
struct Inner {
    /// By id (ids from 1 on).
    schemas: BTreeMap<u32, Stored>,
    seen: Vec<Seen>,
    /// `Authorization` header every request must carry, if any.
    required_auth: Option<String>,
    /// While set, every request is answered 503.
    failing: bool,
}

type Shared = Arc<Mutex<Inner>>;

fn lock(s: &Shared) -> MutexGuard<'_, Inner> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// The running registry; dropping it stops it.
pub struct TestRegistry {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    inner: Shared,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

fn error(status: StatusCode, code: u32, message: String) -> Response {
    let body = json!({"error_code": code, "message": message});
    (status, axum::Json(body)).into_response()
}

fn ok(body: Value) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/vnd.schemaregistry.v1+json",
        )],
        body.to_string(),
    )
        .into_response()
}

fn full(id: u32, s: &Stored) -> Value {
    let mut v = json!({"subject": s.subject, "id": id, "version": s.version, "schema": s.schema});
    if let Some(t) = &s.schema_type {
        v["schemaType"] = json!(t);
    }
    v
}

async fn gate(State(inner): State<Shared>, request: Request, next: Next) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let (failing, allowed) = {
        let mut i = lock(&inner);
        i.seen.push(Seen {
            method: request.method().to_string(),
            path: request.uri().path().to_string(),
            authorization: authorization.clone(),
        });
        let allowed = i.required_auth.is_none() || i.required_auth == authorization;
        (i.failing, allowed)
    };
    if failing {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            50003,
            "test registry failing".into(),
        );
    }
    if !allowed {
        return error(StatusCode::UNAUTHORIZED, 401, "Unauthorized".into());
    }
    next.run(request).await
}

async fn schema_by_id(State(inner): State<Shared>, Path(id): Path<u32>) -> Response {
    match lock(&inner).schemas.get(&id) {
        Some(s) => {
            let mut v = json!({"schema": s.schema});
            if let Some(t) = &s.schema_type {
                v["schemaType"] = json!(t);
            }
            ok(v)
        }
        None => error(
            StatusCode::NOT_FOUND,
            40403,
            format!("Schema {id} not found"),
        ),
    }
}

/// The `schema` (and `schemaType`) of a registration or lookup body, or why not.
fn schema_of(body: &[u8]) -> Result<(String, Option<String>), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let schema = v["schema"].as_str().ok_or("no schema")?.to_string();
    let schema_type = v["schemaType"]
        .as_str()
        .filter(|t| *t != "AVRO")
        .map(String::from);
    Ok((schema, schema_type))
}

fn unprocessable(why: String) -> Response {
    error(StatusCode::UNPROCESSABLE_ENTITY, 42201, why)
}

async fn register(
    State(inner): State<Shared>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Response {
    match schema_of(&body) {
        Ok((schema, schema_type)) => {
            let id = lock(&inner).register(&subject, &schema, schema_type);
            ok(json!({"id": id}))
        }
        Err(why) => unprocessable(why),
    }
}

async fn lookup(State(inner): State<Shared>, Path(subject): Path<String>, body: Bytes) -> Response {
    let (schema, _) = match schema_of(&body) {
        Ok(s) => s,
        Err(why) => return unprocessable(why),
    };
    let i = lock(&inner);
    match i
        .schemas
        .iter()
        .find(|(_, s)| s.subject == subject && s.schema == schema)
    {
        Some((id, s)) => ok(full(*id, s)),
        None => error(StatusCode::NOT_FOUND, 40403, "Schema not found".into()),
    }
}

async fn subjects(State(inner): State<Shared>) -> Response {
    let i = lock(&inner);
    let mut names: Vec<&str> = i.schemas.values().map(|s| s.subject.as_str()).collect();
    names.sort();
    names.dedup();
    ok(json!(names))
}

async fn versions(State(inner): State<Shared>, Path(subject): Path<String>) -> Response {
    let i = lock(&inner);
    let v: Vec<u32> = i
        .schemas
        .values()
        .filter(|s| s.subject == subject)
        .map(|s| s.version)
        .collect();
    if v.is_empty() {
        return error(
            StatusCode::NOT_FOUND,
            40401,
            format!("Subject '{subject}' not found."),
        );
    }
    ok(json!(v))
}

async fn version(
    State(inner): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
) -> Response {
    let i = lock(&inner);
    let mut of_subject = i.schemas.iter().filter(|(_, s)| s.subject == subject);
    let found = match version.as_str() {
        "latest" | "-1" => of_subject.max_by_key(|(_, s)| s.version),
        v => of_subject.find(|(_, s)| v.parse() == Ok(s.version)),
    };
    match found {
        Some((id, s)) => ok(full(*id, s)),
        None => error(
            StatusCode::NOT_FOUND,
            40402,
            format!("Version {version} not found."),
        ),
    }
}

impl Inner {
    /// The same schema text under the same subject keeps its id; a new one gets the
    /// next id and the subject's next version.
    fn register(&mut self, subject: &str, schema: &str, schema_type: Option<String>) -> u32 {
        if let Some((id, _)) = self
            .schemas
            .iter()
            .find(|(_, s)| s.subject == subject && s.schema == schema)
        {
            return *id;
        }
        let id = self.schemas.keys().next_back().map_or(1, |last| last + 1);
        let version = self
            .schemas
            .values()
            .filter(|s| s.subject == subject)
            .map(|s| s.version)
            .max()
            .unwrap_or(0)
            + 1;
        self.schemas.insert(
            id,
            Stored {
                subject: subject.into(),
                version,
                schema: schema.into(),
                schema_type,
            },
        );
        id
    }
}

/// A CA and a server certificate for 127.0.0.1 signed by it (PEM files in a
/// temporary directory), made with the `openssl` command line.
pub struct TestCa {
    _dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new() -> TestCa {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = |name: &str| dir.path().join(name).display().to_string();
        std::fs::write(
            p("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write server.ext");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let steps: [Vec<String>; 3] = [
            ["req", "-x509"]
                .into_iter()
                .chain(ec)
                .map(String::from)
                .chain([
                    "-keyout".into(),
                    p("ca.key"),
                    "-out".into(),
                    p("ca.pem"),
                    "-days".into(),
                    "2".into(),
                    "-subj".into(),
                    "/CN=engaged test CA".into(),
                ])
                .collect(),
            ["req"]
                .into_iter()
                .chain(ec)
                .map(String::from)
                .chain([
                    "-keyout".into(),
                    p("server.key"),
                    "-out".into(),
                    p("server.csr"),
                    "-subj".into(),
                    "/CN=127.0.0.1".into(),
                ])
                .collect(),
            [
                "x509",
                "-req",
                "-in",
                &p("server.csr"),
                "-CA",
                &p("ca.pem"),
                "-CAkey",
                &p("ca.key"),
                "-CAcreateserial",
                "-out",
                &p("server.pem"),
                "-days",
                "2",
                "-extfile",
                &p("server.ext"),
            ]
            .map(String::from)
            .to_vec(),
        ];
        for args in steps {
            let out = Command::new("openssl")
                .args(&args)
                .output()
                .expect("the openssl command line (Debian package openssl)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        TestCa {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("server.pem"),
            key: dir.path().join("server.key"),
            _dir: dir,
        }
    }
}

/// Accepts TCP connections and completes a TLS handshake on each (a failed one is
/// dropped: the client refused the certificate).
struct TlsListener {
    tcp: TcpListener,
    tls: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.tls.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

fn tls_acceptor(cert: &FsPath, key: &FsPath) -> TlsAcceptor {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .expect("certificate file")
        .collect::<Result<_, _>>()
        .expect("certificates");
    let key = PrivateKeyDer::from_pem_file(key).expect("private key");
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server certificate");
    TlsAcceptor::from(Arc::new(config))
}

impl TestRegistry {
    /// An empty registry on a free loopback port, without authentication.
    pub fn start() -> TestRegistry {
        TestRegistry::start_with(None)
    }

    /// [`TestRegistry::start`], serving https with `ca`'s server certificate.
    pub fn start_tls(ca: &TestCa) -> TestRegistry {
        TestRegistry::start_with(Some(tls_acceptor(&ca.cert, &ca.key)))
    }

    fn start_with(tls: Option<TlsAcceptor>) -> TestRegistry {
        let inner: Shared = Arc::default();
        let app = Router::new()
            .route("/schemas/ids/{id}", get(schema_by_id))
            .route("/schemas/types", get(|| async { ok(json!(["AVRO"])) }))
            .route("/subjects", get(subjects))
            .route("/subjects/{subject}", post(lookup))
            .route("/subjects/{subject}/versions", get(versions).post(register))
            .route("/subjects/{subject}/versions/{version}", get(version))
            .route(
                "/config",
                get(|| async { ok(json!({"compatibilityLevel": "BACKWARD"})) }),
            )
            .route(
                "/config/{subject}",
                get(|| async { ok(json!({"compatibilityLevel": "BACKWARD"})) }),
            )
            .layer(middleware::from_fn_with_state(inner.clone(), gate))
            .with_state(inner.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("non-blocking");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}", listener.local_addr().expect("address"));
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("registry runtime");
            rt.block_on(async move {
                let tcp = TcpListener::from_std(listener).expect("listener");
                match tls {
                    None => tokio::select! {
                        _ = axum::serve(tcp, app) => {}
                        _ = stopped => {}
                    },
                    Some(tls) => tokio::select! {
                        _ = axum::serve(TlsListener { tcp, tls }, app) => {}
                        _ = stopped => {}
                    },
                }
            });
        });
        TestRegistry {
            url,
            inner,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Requires `Authorization: Basic base64(user:password)` on every request.
    pub fn require_basic_auth(&self, header_value: &str) {
        lock(&self.inner).required_auth = Some(header_value.to_string());
    }

    /// While `failing`, every request is answered 503.
    pub fn set_failing(&self, failing: bool) {
        lock(&self.inner).failing = failing;
    }

    /// Registers `schema` (JSON text) under `subject`, as `POST
    /// /subjects/{subject}/versions` does; returns its id.
    pub fn register(&self, subject: &str, schema: &str) -> u32 {
        lock(&self.inner).register(subject, schema, None)
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.inner).seen.clone()
    }

    /// How many times `GET /schemas/ids/{id}` was asked.
    pub fn lookups_of(&self, id: u32) -> usize {
        let path = format!("/schemas/ids/{id}");
        lock(&self.inner)
            .seen
            .iter()
            .filter(|s| s.method == "GET" && s.path == path)
            .count()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
