//! `/metrics` pages (Prometheus text exposition): parsed into samples, or read as text.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::process::http_get;

/// One sample line of a text exposition.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed `/metrics` page.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub text: String,
    pub samples: Vec<Sample>,
}

fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .ok_or_else(|| format!("bad labels {s:?}"))?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => break,
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.ok_or_else(|| format!("unterminated label value in {s:?}"))?;
        out.insert(name.trim_start_matches(',').trim().to_string(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    Ok(out)
}

impl Metrics {
    pub fn parse(text: &str) -> Result<Metrics, String> {
        let mut samples = vec![];
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = match line.rfind('}') {
                Some(close) => (&line[..=close], line[close + 1..].trim()),
                None => line
                    .split_once(' ')
                    .ok_or_else(|| format!("bad sample line {line:?}"))?,
            };
            let value = value.split_whitespace().next().unwrap_or("");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().map_err(|_| format!("bad value in {line:?}"))?,
            };
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, parse_labels(l.trim_end_matches('}'))?),
                None => (series, BTreeMap::new()),
            };
            samples.push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
        }
        Ok(Metrics {
            text: text.to_string(),
            samples,
        })
    }

    /// `GET /metrics` of `addr`, parsed.
    pub fn scrape(addr: SocketAddr) -> Result<Metrics, String> {
        let (status, body) = http_get(addr, "/metrics")?;
        if status != 200 {
            return Err(format!("/metrics answered {status}: {body}"));
        }
        Metrics::parse(&body)
    }

    /// The value of the series `name` with exactly these labels.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// Like [`Metrics::get`], but the series must exist.
    pub fn val(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| {
            panic!(
                "series {name}{labels:?} missing from /metrics:\n{}",
                self.relevant(name)
            )
        })
    }

    /// Sum over every series of `name` (0 when absent).
    pub fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum()
    }

    /// Every series of `name`.
    pub fn series(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }

    /// The lines of the page that start with `prefix` (the whole page if none does).
    pub fn relevant(&self, prefix: &str) -> String {
        let lines: Vec<&str> = self
            .text
            .lines()
            .filter(|l| l.starts_with(prefix))
            .collect();
        if lines.is_empty() {
            self.text.clone()
        } else {
            lines.join("\n")
        }
    }
}

// ---------------------------------------------------------------------------------------
// The page as text

/// The windowed series (`name{labels}` → value as printed): state-derived numbers, not
/// process-cumulative counters.
pub fn windowed(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            [
                "engaged_web_",
                "engaged_email_",
                "engaged_commerce_",
                "engaged_survey_",
                "engaged_customers_",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        // The duration histogram counts since the process started.
        .filter(|l| !l.starts_with("engaged_web_session_duration_seconds_"))
        .filter_map(|l| {
            l.rsplit_once(' ')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// The value of the series `name` (with its labels, if any, as printed).
pub fn value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

/// Every series of the family `name` (`name{labels}` → value).
pub fn family(text: &str, name: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b' ' | b'{'))
        })
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Sum over every series of the family `name` (0 when absent).
pub fn sum(text: &str, name: &str) -> f64 {
    family(text, name).values().sum()
}

/// Whether a windowed series is a count or a sum (a numerator or a denominator), which
/// instances add up; ratios, averages, percentiles and scores do not.
pub fn additive(series: &str) -> bool {
    let name = series.split('{').next().unwrap_or(series);
    let name = ["_by_site", "_by_channel", "_by_campaign", "_by_page"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name);
    !(name.ends_with("_ratio")
        || name.contains("_avg_")
        || name.contains("_p50_")
        || name.contains("_p90_")
        || [
            "engaged_commerce_average_order_value_minor",
            "engaged_commerce_orders_per_customer",
            "engaged_commerce_profit_per_customer_minor",
            "engaged_survey_nps",
            "engaged_survey_csat",
            "engaged_survey_ces",
        ]
        .contains(&name))
}

/// The [`additive`] windowed series, summed over instances (a missing series counts 0).
pub fn summed<'a>(
    instances: impl IntoIterator<Item = &'a BTreeMap<String, String>>,
) -> BTreeMap<String, f64> {
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for m in instances {
        for (k, v) in m.iter().filter(|(k, _)| additive(k)) {
            *out.entry(k.clone()).or_default() += v.parse::<f64>().expect("a number");
        }
    }
    out
}

/// Equal up to a relative 1e-9 (absolute below 1).
pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}
