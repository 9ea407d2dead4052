//! Finding workers through DNS: every address a name resolves to (a Kubernetes headless
//! Service gives one per ready pod) is a remote worker, re-resolved on an interval.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::backend::Backend;
use super::SharedFront;
use crate::config::DiscoverSection;

/// Resolves `host:port` to addresses (a seam: tests pass their own).
pub type Resolver =
    Arc<dyn Fn(String) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> + Send + Sync>;

/// The system's resolver (`getaddrinfo`, so `/etc/hosts` and cluster DNS alike).
pub fn system_resolver() -> Resolver {
    Arc::new(|name: String| {
        Box::pin(async move { Ok(tokio::net::lookup_host(name).await?.collect()) })
    })
}

/// The id prefix of the backends one discovery entry owns.
pub fn prefix(entry: &DiscoverSection) -> String {
    format!("{}/", entry.name)
}

/// Resolves once and makes the front's backends of this entry match the answer. A failed
/// lookup keeps the current set (a DNS hiccup must not empty the pool); an empty answer
/// empties it.
pub async fn refresh(front: &SharedFront, entry: &DiscoverSection, resolver: &Resolver) {
    let mut addresses = match resolver(entry.dns.clone()).await {
        Ok(addresses) => addresses,
        Err(e) => {
            tracing::warn!(name = %entry.dns, error = %e, "worker discovery: lookup failed; keeping the current workers");
            return;
        }
    };
    addresses.sort();
    addresses.dedup();
    let prefix = prefix(entry);
    let existing = front.backends();
    let fresh: Vec<Arc<Backend>> = addresses
        .iter()
        .map(|addr| {
            let id = format!("{prefix}{addr}");
            existing
                .iter()
                .find(|b| b.id == id)
                .cloned()
                .unwrap_or_else(|| {
                    Arc::new(
                        Backend::remote(
                            id,
                            entry.model.clone(),
                            entry.profile.clone().unwrap_or_else(|| "remote".into()),
                            format!("http://{addr}"),
                        )
                        .with_key(entry.api_key.as_deref()),
                    )
                })
        })
        .collect();
    front.replace_group(&prefix, fresh);
}

/// Refreshes every `interval_secs` for as long as the process runs.
pub fn spawn(front: SharedFront, entry: DiscoverSection, resolver: Resolver) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(entry.interval_secs));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            refresh(&front, &entry, &resolver).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::config::DeployConfig;

    fn front() -> SharedFront {
        let config = DeployConfig::from_str_at(
            "[[remote]]\nname = \"static\"\nurl = \"http://127.0.0.1:1\"\nmodel = \"m\"\n",
            "test",
            std::path::Path::new("."),
        )
        .unwrap();
        crate::router::Front::new(&config, Arc::new(crate::router::lifecycle::Unmanaged))
    }

    fn entry() -> DiscoverSection {
        DiscoverSection {
            name: "workers".into(),
            dns: "workers.svc:8081".into(),
            model: "m".into(),
            profile: Some("1g.10gb".into()),
            interval_secs: 1.0,
            api_key: None,
        }
    }

    /// A resolver answering from a list the test changes.
    fn scripted(answer: Arc<Mutex<std::io::Result<Vec<SocketAddr>>>>) -> Resolver {
        Arc::new(move |_name| {
            let answer = answer.clone();
            Box::pin(async move {
                match &*answer.lock().unwrap() {
                    Ok(a) => Ok(a.clone()),
                    Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                }
            })
        })
    }

    fn ids(front: &SharedFront) -> Vec<String> {
        front.backends().iter().map(|b| b.id.clone()).collect()
    }

    #[tokio::test]
    async fn workers_follow_the_dns_answer() {
        let front = front();
        let entry = entry();
        let a: SocketAddr = "10.0.0.1:8081".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:8081".parse().unwrap();
        let answer = Arc::new(Mutex::new(Ok(vec![b, a, a])));
        let resolver = scripted(answer.clone());

        refresh(&front, &entry, &resolver).await;
        assert_eq!(
            ids(&front),
            ["static", "workers/10.0.0.1:8081", "workers/10.0.0.2:8081"]
        );
        let kept = front.backends()[1].clone();
        kept.stats.record_success(
            None,
            Some(0.01),
            5,
            crate::router::cost::CostSample::default(),
        );

        // One pod goes, another comes: the one that stayed keeps its identity and stats.
        let c: SocketAddr = "10.0.0.3:8081".parse().unwrap();
        *answer.lock().unwrap() = Ok(vec![a, c]);
        refresh(&front, &entry, &resolver).await;
        assert_eq!(
            ids(&front),
            ["static", "workers/10.0.0.1:8081", "workers/10.0.0.3:8081"]
        );
        assert!(Arc::ptr_eq(&kept, &front.backends()[1]));
        assert_eq!(front.backends()[1].stats.snapshot().generated_tokens, 5);
        assert_eq!(front.backends()[2].profile, "1g.10gb");

        // A failed lookup keeps them; an empty answer removes them.
        *answer.lock().unwrap() = Err(std::io::Error::other("SERVFAIL"));
        refresh(&front, &entry, &resolver).await;
        assert_eq!(front.backends().len(), 3);
        *answer.lock().unwrap() = Ok(vec![]);
        refresh(&front, &entry, &resolver).await;
        assert_eq!(ids(&front), ["static"]);
        assert!(
            front.serves("m"),
            "the model stays known while it has no worker"
        );
    }

    #[tokio::test]
    async fn the_system_resolver_resolves_localhost() {
        let addresses = system_resolver()("localhost:8081".into()).await.unwrap();
        assert!(addresses
            .iter()
            .any(|a| a.ip().is_loopback() && a.port() == 8081));
    }
}
