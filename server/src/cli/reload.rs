//! `migserve reload`: asks a running `serve` to read its config again and apply the
//! difference (what SIGHUP does), and prints what changed.

use std::path::PathBuf;

use anyhow::{bail, Context};

use crate::fleet::admin::AdminKeyArgs;

/// Arguments of `migserve reload`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReloadArgs {
    /// The front of the running `serve`; default: the `listen` address of --config, else
    /// http://127.0.0.1:8080.
    #[arg(long, env = "MIGSERVE_URL")]
    pub url: Option<String>,
    /// The config `serve` runs (only its `listen` address is read, to find it).
    #[arg(long, env = "MIGSERVE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub admin: AdminKeyArgs,
}

/// The front's URL: `--url`, else the config's `listen` (an unspecified address is reached
/// on loopback), else the default.
fn front_url(args: &ReloadArgs) -> anyhow::Result<String> {
    if let Some(url) = &args.url {
        return Ok(url.trim_end_matches('/').to_string());
    }
    let Some(path) = &args.config else {
        return Ok("http://127.0.0.1:8080".into());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let listen: std::net::SocketAddr = match table.get("listen").and_then(|v| v.as_str()) {
        Some(listen) => listen
            .parse()
            .with_context(|| format!("{}: listen {listen:?}", path.display()))?,
        None => return Ok("http://127.0.0.1:8080".into()),
    };
    let host = match listen.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
        ip if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    Ok(format!("http://{host}:{}", listen.port()))
}

/// Runs `migserve reload`.
pub fn run(args: ReloadArgs) -> anyhow::Result<()> {
    let url = front_url(&args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (status, body) = runtime.block_on(async {
        let mut request = reqwest::Client::new()
            .post(format!("{url}/reload"))
            .timeout(std::time::Duration::from_secs(60));
        if let Some(key) = &args.admin.admin_key {
            request = request.bearer_auth(key.trim());
        }
        let response = request.send().await.with_context(|| {
            format!("calling {url}/reload (is `migserve serve` running there?)")
        })?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        anyhow::Ok((status, body))
    })?;
    if !status.is_success() {
        let why = body["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| body.to_string());
        bail!("reload refused ({status}): {why}");
    }
    let list = |key: &str| -> String {
        let items: Vec<&str> = body[key]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        match items.is_empty() {
            true => "-".into(),
            false => items.join(", "),
        }
    };
    for (label, key) in [
        ("added", "added"),
        ("removed", "removed"),
        ("changed (restarted)", "changed"),
        ("unchanged", "unchanged"),
        ("workers started", "started"),
        ("workers stopped", "stopped"),
        ("needs a restart of serve", "needs_restart"),
    ] {
        println!("{label:<26} {}", list(key));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_comes_from_the_flag_then_the_config() {
        let args = |url: Option<&str>, config: Option<PathBuf>| ReloadArgs {
            url: url.map(String::from),
            config,
            admin: AdminKeyArgs::default(),
        };
        assert_eq!(
            front_url(&args(Some("http://h:1/"), None)).unwrap(),
            "http://h:1"
        );
        let dir = std::env::temp_dir().join(format!("migserve-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "listen = \"0.0.0.0:9090\"\n[[models]]\n").unwrap();
        assert_eq!(
            front_url(&args(None, Some(file.clone()))).unwrap(),
            "http://127.0.0.1:9090"
        );
        std::fs::write(&file, "[[models]]\n").unwrap();
        assert_eq!(
            front_url(&args(None, Some(file))).unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            front_url(&args(None, None)).unwrap(),
            "http://127.0.0.1:8080"
        );
    }
}
