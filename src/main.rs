//! `engaged` command line: `run` (the sidecar), `demo` (embedded default) and `replay` (files).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use engaged::config::RawConfig;
use engaged::demo::runner::{self, DemoOptions, Scenario};
use engaged::replay::{self, ReplayOptions};

/// Streaming customer-engagement metrics from Kafka: sessions, bounce rate and more,
/// over rolling event-time windows, to Prometheus and a snapshot topic.
#[derive(Parser)]
#[command(name = "engaged", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar: consume the input topics in a consumer group, serve /metrics,
    /// publish snapshots. Stops gracefully on SIGTERM or Ctrl-C.
    Run(RunArgs),
    /// Run everything in-process: a Kafka mock cluster, a traffic generator and the
    /// sidecar, with a live page at /, /metrics and a live table in the terminal.
    /// `--scenario churn-spike` makes churn risk spike on demand. Ctrl-C exits.
    Demo(DemoArgs),
    /// Replay Avro object container files (one SPEC record type, or a union of them)
    /// as one partition, then print the final snapshot of every window as JSON lines.
    Replay(ReplayArgs),
}

/// Settings shared by every command. Each flag overrides the config file and the
/// matching `ENGAGED_<KEY>` environment variable; see README.md for all keys.
#[derive(Args, Serialize, Default)]
struct ConfigFlags {
    /// TOML configuration file (keys as in README.md).
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Rolling windows, comma-separated, e.g. `5m,1h,24h,7d,30d`; `W/b` sets the bucket size.
    #[arg(long, value_name = "LIST")]
    #[serde(skip_serializing_if = "Option::is_none")]
    windows: Option<String>,
    /// How far behind the largest event time an event may arrive before it is late (e.g. `5m`).
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed_lateness: Option<String>,
    /// Gap between page views that ends a session (default `30m`).
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    session_timeout: Option<String>,
    /// How long (event time) an accepted event_id is remembered to reject duplicates.
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    dedup_window: Option<String>,
    /// Top-N values kept per breakdown label (site, channel, campaign); the rest become `other`.
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_dimension_values: Option<usize>,
    /// Values of each label (site, channel, page, campaign) one partition names at
    /// a time; values seen while it is full count as `other`.
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_label_values: Option<usize>,
    /// The one currency (ISO 4217) of Purchase events; others are rejected as invalid.
    #[arg(long, value_name = "CODE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    currency: Option<String>,
    /// Inactivity after which a customer has churned (default `90d`).
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    churn_horizon: Option<String>,
    /// An ORDER this soon after the customer's last email click is attributed to it (default `7d`).
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    attribution_window: Option<String>,
    /// How long a message's first open/click is remembered (default `30d`).
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    email_dedup_ttl: Option<String>,
    /// Forget a customer whose last ORDER is longer ago than this (e.g. `365d`); `off` (default): never.
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    state_ttl: Option<String>,
    /// Churn-risk model: `mbg_nbd` (default) or `bg_nbd`.
    #[arg(long, value_name = "MODEL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    /// Churn risk at or above this makes a customer at risk (default 0.7).
    #[arg(long, value_name = "P")]
    #[serde(skip_serializing_if = "Option::is_none")]
    risk_threshold: Option<f64>,
    /// Customers a model fit uses at most, a uniform sample (0 = all; default 100000).
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    model_sample_size: Option<usize>,
}

#[derive(Args, Serialize, Default)]
struct RunArgs {
    #[command(flatten)]
    #[serde(flatten)]
    common: ConfigFlags,
    /// Kafka bootstrap servers, `host:port[,host:port]`.
    #[arg(long, value_name = "SERVERS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    bootstrap_servers: Option<String>,
    /// Consumer group id; instances with the same id share the partitions.
    #[arg(long, value_name = "ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    group_id: Option<String>,
    /// Input topics, comma-separated (co-partitioned by customer_id).
    #[arg(long, value_name = "LIST")]
    #[serde(skip_serializing_if = "Option::is_none")]
    input_topics: Option<String>,
    /// Topic for the Avro EngagementSnapshot records.
    #[arg(long, value_name = "TOPIC")]
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot_topic: Option<String>,
    /// Topic for rejected records (original record plus engaged.* headers).
    #[arg(long, value_name = "TOPIC")]
    #[serde(skip_serializing_if = "Option::is_none")]
    dead_letter_topic: Option<String>,
    /// How often snapshots are computed and published (e.g. `5s`).
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot_interval: Option<String>,
    /// A partition without records for this long stops holding the watermark back.
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_timeout: Option<String>,
    /// Events stamped further than this ahead of the wall clock are rejected (`0s` disables).
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_clock_skew: Option<String>,
    /// Longest a graceful shutdown may take.
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    shutdown_timeout: Option<String>,
    /// HTTP address for /metrics, /healthz and /readyz.
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
}

#[derive(Args)]
struct DemoArgs {
    /// HTTP address for the live page (/), /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:9898")]
    listen: SocketAddr,
    /// Time scale: simulated seconds per real second (event time never passes now).
    #[arg(
        long = "time-scale",
        visible_alias = "speed",
        value_name = "X",
        default_value_t = 600.0
    )]
    speed: f64,
    /// What the traffic does: `steady`, or `churn-spike` (a cohort stops all activity
    /// `--spike-after` into the demo; their churn risk crosses the threshold together
    /// about a day of event time later).
    #[arg(long, value_name = "SCENARIO", default_value_t = Scenario::Steady)]
    scenario: Scenario,
    /// Wall time from the start to the churn spike (`--scenario churn-spike`), e.g. `60s`,
    /// `5m`; at least 30s.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    spike_after: Duration,
    /// Partitions per input topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Seconds between live tables (0: no table).
    #[arg(long, default_value_t = 5)]
    table_every: u64,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    seconds: Option<u64>,
    /// Seed of the traffic generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(Args)]
struct ReplayArgs {
    /// Avro object container files, processed in order as one partition.
    #[arg(required = true, value_name = "FILE.avro")]
    files: Vec<PathBuf>,
    /// Final watermark: RFC 3339 time (`2026-11-22T10:00:00Z`) or Unix milliseconds.
    /// Default: the largest event time seen.
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
    /// Write rejected records (with reason) here as JSON lines.
    #[arg(long, value_name = "FILE")]
    dead_letter: Option<PathBuf>,
    /// Never show the progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Write every customer's final churn risk (model fitted on all customers at the
    /// final watermark) here as JSON lines.
    #[arg(long, value_name = "FILE")]
    customer_risks: Option<PathBuf>,
    #[command(flatten)]
    common: ConfigFlags,
}

fn parse_time(s: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|d| d.timestamp_millis())
        .with_context(|| format!("--at {s:?}: expected an RFC 3339 time like 2026-11-22T10:00:00Z or Unix milliseconds"))
}

fn init_logs(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// mimalloc instead of glibc malloc: the state is millions of small allocations
/// (per-customer bucket lists, histories); see docs/performance.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The chain of causes, without a backtrace: these are operator errors.
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => {
            init_logs("info");
            let raw = RawConfig::load(args.common.config.as_deref(), &args)?;
            let config = raw.validate()?;
            let decoder = config.decoder_config()?;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let sidecar = engaged::app::Sidecar::start(config, &decoder).await?;
                sidecar.run(engaged::app::shutdown_signal()).await
            })?;
            tracing::info!("stopped");
            Ok(())
        }
        Command::Demo(args) => {
            init_logs("warn");
            anyhow::ensure!(
                args.speed.is_finite() && args.speed > 0.0,
                "--time-scale {}: simulated seconds per real second, a number greater than 0",
                args.speed
            );
            anyhow::ensure!(
                args.scenario != Scenario::ChurnSpike
                    || args.spike_after >= runner::MIN_SPIKE_AFTER,
                "--spike-after {}: at least {} (the churn model is first fitted then, before the spike)",
                humantime::format_duration(args.spike_after),
                humantime::format_duration(runner::MIN_SPIKE_AFTER)
            );
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(runner::run(
                DemoOptions {
                    listen: args.listen,
                    speed: args.speed,
                    partitions: args.partitions,
                    table_every: (args.table_every > 0)
                        .then(|| Duration::from_secs(args.table_every)),
                    duration: args.seconds.map(Duration::from_secs),
                    seed: args.seed,
                    scenario: args.scenario,
                    spike_after: args.spike_after,
                },
                engaged::app::shutdown_signal(),
            ))?;
            Ok(())
        }
        Command::Replay(args) => {
            init_logs("warn");
            let raw = RawConfig::load(args.common.config.as_deref(), &args.common)?;
            let config = raw.validate()?;
            let at = args.at.as_deref().map(parse_time).transpose()?;
            let opts = ReplayOptions {
                files: args.files,
                at,
                progress: !args.no_progress,
                dead_letter: args.dead_letter,
                customer_risks: args.customer_risks,
                generic_decode: false,
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let summary = replay::replay(config.core, &opts, &mut out)?;
            use std::io::Write;
            out.flush()?;
            eprintln!(
                "replayed {} records: {} accepted, rejected {:?}; watermark {:?}",
                summary.consumed, summary.accepted, summary.rejected, summary.watermark
            );
            eprintln!(
                "state at the end (docs/operations.md \"Memory model\"): {}",
                summary.state
            );
            eprintln!(
                "final churn-model fit {:.0?}, rescoring sweep {:.0?}, snapshot round {:.1?}",
                summary.fit, summary.sweep, summary.snapshot
            );
            Ok(())
        }
    }
}
