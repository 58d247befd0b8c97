//! `engaged` as a child process, and a minimal HTTP client (HTTP/1.0 over a
//! `TcpStream`: no client dependency).

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (bound, then released; good enough on a test machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// `GET path`; returns the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut raw = vec![];
    s.read_to_end(&mut raw)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let raw = String::from_utf8(raw).map_err(|e| format!("response is not UTF-8: {e}"))?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("malformed HTTP response: {raw:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status code in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// Runs `engaged ARGS` to completion, failing the test (with its stderr) unless it
/// succeeds; returns its stdout.
pub fn engaged_ok<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_engaged"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The log lines of tasks restored from checkpoints (not those that found none).
pub fn checkpoint_restores(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("restored from checkpoints") && !l.contains("restored=0"))
        .map(String::from)
        .collect()
}

/// An `engaged run` child process, killed on drop. `KEEP_ENGAGED_LOGS=DIR` keeps its
/// log; a panicking test prints the log's tail.
pub struct Engaged {
    pub name: String,
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Engaged {
    /// `engaged run --config DIR/NAME.toml`, where the file is `config` with `listen` set
    /// to a free loopback port, and stderr appended to `DIR/NAME.log`. Only the file
    /// configures it: the caller's `ENGAGED_*` variables are removed.
    pub fn start(name: &str, dir: &Path, config: &str) -> Engaged {
        Engaged::start_with_env(name, dir, config, &[])
    }

    /// [`Engaged::start`] with extra environment variables for the child (set after
    /// the caller's `ENGAGED_*` variables are removed, `RUST_LOG` included).
    pub fn start_with_env(name: &str, dir: &Path, config: &str, env: &[(&str, &str)]) -> Engaged {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(&file, format!("listen = \"{addr}\"\n{config}")).unwrap();
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_engaged"));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ENGAGED_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .args(["run", "--config"])
            .arg(&file)
            // `ENGAGED_TEST_LOG=info,engaged::source=debug` to see more of a failing run.
            .env(
                "RUST_LOG",
                std::env::var("ENGAGED_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        Engaged {
            name: name.to_string(),
            child,
            addr,
            log,
        }
    }

    /// `GET path` (status, body); `None` if it cannot be fetched.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.addr, path).ok()
    }

    /// `/metrics`, failing the test if the process has exited.
    pub fn metrics(&mut self) -> Option<String> {
        if let Ok(Some(s)) = self.child.try_wait() {
            panic!("{} exited early with {s}:\n{}", self.name, self.log_tail());
        }
        self.get("/metrics").map(|(_, body)| body)
    }

    /// `/readyz` (status, body).
    pub fn ready(&self) -> Option<(u16, String)> {
        self.get("/readyz")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let log = self.log();
        log[log.len().saturating_sub(5000)..].to_string()
    }

    /// `kill -TERM` (graceful shutdown, SPEC §5).
    pub fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -TERM {}", self.name);
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}:\n{}",
                self.name,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, and waits for the process to go.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Engaged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(keep) = std::env::var_os("KEEP_ENGAGED_LOGS") {
            let _ = std::fs::create_dir_all(&keep);
            let _ = std::fs::copy(
                &self.log,
                Path::new(&keep).join(format!("{}.log", self.name)),
            );
        }
        if std::thread::panicking() {
            eprintln!("--- {} log tail:\n{}", self.name, self.log_tail());
        }
    }
}
