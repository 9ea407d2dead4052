//! Cross-checking loadtest's counts against the server's own Prometheus counters.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Counters tried in order (requests, generated tokens, attempts to subtract): migserve's
/// router (which counts a request once per slice it tried), then its worker.
const COUNTERS: [(&str, &str, Option<&str>); 2] = [
    (
        "migserve_router_requests_total",
        "migserve_router_generated_tokens_total",
        Some("migserve_router_retries_total"),
    ),
    (
        "migserve_requests_total",
        "migserve_generated_tokens_total",
        None,
    ),
];

/// Every series of `name` in Prometheus text: its labels and its value.
pub fn series<'a>(
    text: &'a str,
    name: &'a str,
) -> impl Iterator<Item = (Vec<(String, String)>, f64)> + 'a {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(move |line| {
            let rest = line.strip_prefix(name)?;
            // `name{labels} value [timestamp]`: the value is the first field after the labels.
            let (labels, after) = match rest.strip_prefix('{') {
                Some(labelled) => parse_labels(labelled)?,
                None if rest.starts_with(' ') => (Vec::new(), rest),
                None => return None,
            };
            let value = after.split_whitespace().next()?.parse::<f64>().ok()?;
            Some((labels, value))
        })
}

/// `k="v",...}` (after the opening brace): the pairs, unescaped, and what follows the brace.
fn parse_labels(mut rest: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, value_start) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = value_start.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.trim().to_string(), value));
        rest = &value_start[end + 1..];
    }
}

/// Sum of every series of `name` in Prometheus text (all label sets).
pub fn sum_series(text: &str, name: &str) -> Option<f64> {
    sum_where(text, name, None)
}

/// Sum of the series of `name` whose label `key` is `value` (every series without a filter);
/// `None` when no series matches.
fn sum_where(text: &str, name: &str, filter: Option<(&str, &str)>) -> Option<f64> {
    let mut matching = series(text, name)
        .filter(|(labels, _)| match filter {
            Some((key, value)) => labels.iter().any(|(k, v)| k == key && v == value),
            None => true,
        })
        .map(|(_, v)| v)
        .peekable();
    matching.peek()?;
    Some(matching.sum())
}

/// Reads `{url}/metrics`; `None` when the server has none or cannot be reached.
pub async fn fetch(client: &reqwest::Client, url: &str) -> Option<String> {
    client
        .get(format!("{}/metrics", url.trim_end_matches('/')))
        .send()
        .await
        .ok()?
        .error_for_status()
        .ok()?
        .text()
        .await
        .ok()
}

/// The server's counters at one moment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CounterSnapshot {
    pub requests_metric: String,
    pub requests: f64,
    pub tokens: f64,
    /// Extra attempts counted in `requests` (router retries).
    pub retries: f64,
}

/// The first known counter pair in a `/metrics` text.
pub fn snapshot(text: &str) -> Option<CounterSnapshot> {
    COUNTERS.iter().find_map(|(requests, tokens, retries)| {
        Some(CounterSnapshot {
            requests_metric: requests.to_string(),
            requests: sum_series(text, requests)?,
            tokens: sum_series(text, tokens)?,
            retries: retries.and_then(|r| sum_series(text, r)).unwrap_or(0.0),
        })
    })
}

/// loadtest's counts next to the server's, for one run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MetricsCheck {
    pub metric: String,
    pub server_requests: f64,
    pub loadtest_requests: u64,
    pub server_tokens: f64,
    pub loadtest_tokens: u64,
    /// Largest relative difference of the two pairs.
    pub max_relative_difference: f64,
}

impl MetricsCheck {
    /// Compares the server's counter deltas with what loadtest counted.
    pub fn new(
        before: &CounterSnapshot,
        after: &CounterSnapshot,
        requests: u64,
        tokens: u64,
    ) -> Self {
        let server_requests = (after.requests - after.retries) - (before.requests - before.retries);
        let server_tokens = after.tokens - before.tokens;
        let rel = |server: f64, ours: u64| {
            let ours = ours as f64;
            if server == 0.0 && ours == 0.0 {
                0.0
            } else {
                (server - ours).abs() / server.max(ours)
            }
        };
        Self {
            metric: after.requests_metric.clone(),
            server_requests,
            loadtest_requests: requests,
            server_tokens,
            loadtest_tokens: tokens,
            max_relative_difference: rel(server_requests, requests).max(rel(server_tokens, tokens)),
        }
    }
}

/// Reads `{url}/metrics` once the server's step metrics stop changing (a worker records a
/// step's last phase just after its last token went out, so a reading right at the end of a
/// level could split that step), at most about a second; at once for a server without them.
pub async fn fetch_settled(client: &reqwest::Client, url: &str) -> Option<String> {
    let mut text = fetch(client, url).await;
    for _ in 0..20 {
        let Some(steps) = text.as_deref().and_then(StepTotals::read) else {
            break;
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let again = fetch(client, url).await;
        let settled = again.as_deref().and_then(StepTotals::read).as_ref() == Some(&steps);
        text = again;
        if settled {
            break;
        }
    }
    text
}

/// A migserve worker's step histograms (`migserve_step_*`) at one moment: sums and counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepTotals {
    /// Per step kind (`decode`, `prefill`): seconds, steps, sequences.
    pub kinds: BTreeMap<String, (f64, f64, f64)>,
    /// Per phase: seconds, steps.
    pub phases: BTreeMap<String, (f64, f64)>,
}

const STEP_DURATION: &str = "migserve_step_duration_seconds";
const STEP_SEQUENCES: &str = "migserve_step_sequences_total";
const STEP_PHASES: &str = "migserve_step_phase_seconds";
const STEP_KINDS: [&str; 2] = ["decode", "prefill"];
const PHASES: [&str; 4] = ["schedule", "forward", "sample", "emit"];

impl StepTotals {
    /// The step histograms in a `/metrics` text; `None` when the server has none (not a
    /// migserve worker: a front, another server).
    pub fn read(text: &str) -> Option<Self> {
        let count = |name: &str, key, value| {
            sum_where(text, &format!("{name}_count"), Some((key, value))).unwrap_or(0.0)
        };
        let sum = |name: &str, key, value| {
            sum_where(text, &format!("{name}_sum"), Some((key, value))).unwrap_or(0.0)
        };
        sum_series(text, &format!("{STEP_DURATION}_count"))?;
        let kinds = STEP_KINDS
            .iter()
            .map(|kind| {
                let sequences =
                    sum_where(text, STEP_SEQUENCES, Some(("kind", kind))).unwrap_or(0.0);
                let totals = (
                    sum(STEP_DURATION, "kind", kind),
                    count(STEP_DURATION, "kind", kind),
                    sequences,
                );
                (kind.to_string(), totals)
            })
            .collect();
        let phases = PHASES
            .iter()
            .map(|phase| {
                let totals = (
                    sum(STEP_PHASES, "phase", phase),
                    count(STEP_PHASES, "phase", phase),
                );
                (phase.to_string(), totals)
            })
            .collect();
        Some(Self { kinds, phases })
    }
}

/// What a migserve worker's own step metrics say of one level.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ServerSteps {
    /// Steps that only decoded (one new token per sequence).
    pub decode_steps: u64,
    /// Their mean time.
    pub decode_step_ms: Option<f64>,
    /// Their mean number of sequences.
    pub decode_batch: Option<f64>,
    /// Steps with prompt chunks.
    pub prefill_steps: u64,
    pub prefill_step_ms: Option<f64>,
    /// Mean milliseconds per step of each phase (`schedule`, `forward`, `sample`, `emit`),
    /// over every step of the level.
    pub phase_ms: BTreeMap<String, f64>,
}

impl ServerSteps {
    /// The steps between two readings.
    pub fn between(before: &StepTotals, after: &StepTotals) -> Self {
        let kind = |name: &str| {
            let (s1, c1, n1) = after.kinds.get(name).copied().unwrap_or_default();
            let (s0, c0, n0) = before.kinds.get(name).copied().unwrap_or_default();
            let steps = (c1 - c0).max(0.0);
            let mean = |total: f64| (steps > 0.0).then(|| total / steps);
            (steps as u64, mean((s1 - s0) * 1e3), mean(n1 - n0))
        };
        let (decode_steps, decode_step_ms, decode_batch) = kind("decode");
        let (prefill_steps, prefill_step_ms, _) = kind("prefill");
        let phase_ms = after
            .phases
            .iter()
            .filter_map(|(phase, (s1, c1))| {
                let (s0, c0) = before.phases.get(phase).copied().unwrap_or_default();
                let steps = c1 - c0;
                (steps > 0.0).then(|| (phase.clone(), (s1 - s0) * 1e3 / steps))
            })
            .collect();
        Self {
            decode_steps,
            decode_step_ms,
            decode_batch,
            prefill_steps,
            prefill_step_ms,
            phase_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_label_set() {
        let text = "# TYPE x counter\nmigserve_requests_total{slice=\"a b\"} 3 1700000000000\nmigserve_requests_total{slice=\"b\"} 4\nmigserve_requests_total_other 100\n";
        assert_eq!(sum_series(text, "migserve_requests_total"), Some(7.0));
        assert_eq!(sum_series(text, "absent"), None);
    }

    #[test]
    fn labels_are_read_with_their_escapes() {
        let text = "m{kind=\"decode\",model=\"a\\\"b,c}\"} 2\nm{kind=\"prefill\"} 5\nm 1\n";
        let all: Vec<_> = series(text, "m").collect();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].0[1], ("model".to_string(), "a\"b,c}".to_string()));
        assert_eq!(sum_where(text, "m", Some(("kind", "decode"))), Some(2.0));
        assert_eq!(sum_where(text, "m", Some(("kind", "other"))), None);
        assert_eq!(sum_series(text, "m"), Some(8.0));
    }

    #[test]
    fn step_means_between_two_readings() {
        let text = |decode_sum: f64, decode_count: f64, sequences: f64| {
            format!(
                "migserve_step_duration_seconds_sum{{kind=\"decode\",slice=\"s\"}} {decode_sum}\n\
                 migserve_step_duration_seconds_count{{kind=\"decode\",slice=\"s\"}} {decode_count}\n\
                 migserve_step_sequences_total{{kind=\"decode\",slice=\"s\"}} {sequences}\n\
                 migserve_step_phase_seconds_sum{{phase=\"forward\",slice=\"s\"}} {decode_sum}\n\
                 migserve_step_phase_seconds_count{{phase=\"forward\",slice=\"s\"}} {decode_count}\n"
            )
        };
        let before = StepTotals::read(&text(1.0, 100.0, 400.0)).unwrap();
        let after = StepTotals::read(&text(1.5, 200.0, 1200.0)).unwrap();
        let steps = ServerSteps::between(&before, &after);
        assert_eq!(steps.decode_steps, 100);
        assert!((steps.decode_step_ms.unwrap() - 5.0).abs() < 1e-9);
        assert!((steps.decode_batch.unwrap() - 8.0).abs() < 1e-9);
        assert_eq!(steps.prefill_steps, 0);
        assert_eq!(steps.prefill_step_ms, None);
        assert!((steps.phase_ms["forward"] - 5.0).abs() < 1e-9);
        assert!(StepTotals::read("migserve_requests_total 3\n").is_none());
    }

    #[test]
    fn relative_difference() {
        let snap = |r, t, retries| CounterSnapshot {
            requests_metric: "m".into(),
            requests: r,
            tokens: t,
            retries,
        };
        let check = MetricsCheck::new(&snap(10.0, 100.0, 0.0), &snap(110.0, 1100.0, 0.0), 100, 990);
        assert_eq!(check.server_requests, 100.0);
        assert!((check.max_relative_difference - 0.01).abs() < 1e-12);
        // A request the router retried on a second slice counts once.
        let check = MetricsCheck::new(&snap(0.0, 0.0, 0.0), &snap(11.0, 50.0, 1.0), 10, 50);
        assert_eq!(check.server_requests, 10.0);
        assert_eq!(check.max_relative_difference, 0.0);
    }
}
