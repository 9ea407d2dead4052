//! Cross-checking loadtest's counts against the server's own Prometheus counters.

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

/// Sum of every series of `name` in Prometheus text (all label sets).
pub fn sum_series(text: &str, name: &str) -> Option<f64> {
    let mut found = false;
    let mut total = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        // `name{labels} value [timestamp]`: the value is the first field after the labels.
        let after_labels = match rest.strip_prefix('{') {
            Some(labelled) => labelled.rsplit_once('}').map_or("", |(_, v)| v),
            None => rest,
        };
        let value = after_labels.split_whitespace().next();
        if let Some(value) = value.and_then(|v| v.parse::<f64>().ok()) {
            total += value;
            found = true;
        }
    }
    found.then_some(total)
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

/// Reads the first known counter pair from `{url}/metrics`.
pub async fn snapshot(client: &reqwest::Client, url: &str) -> Option<CounterSnapshot> {
    let text = client
        .get(format!("{}/metrics", url.trim_end_matches('/')))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    COUNTERS.iter().find_map(|(requests, tokens, retries)| {
        Some(CounterSnapshot {
            requests_metric: requests.to_string(),
            requests: sum_series(&text, requests)?,
            tokens: sum_series(&text, tokens)?,
            retries: retries.and_then(|r| sum_series(&text, r)).unwrap_or(0.0),
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
