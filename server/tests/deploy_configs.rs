//! Every config in `configs/` and every migserve config inside `deploy/` parses, validates and
//! places: GPU configs against recorded `nvidia-smi -L` inventories, with the real model file
//! standing in for each model they mount at `/models`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The recorded machine each GPU config is checked against (`None`: emulated or no slices).
fn inventory_for(name: &str) -> Option<&'static str> {
    match name {
        "h100-7x1g.10gb.toml" | "h100-catalogue.toml" | "node-serve/configmap.yaml" => {
            Some("h100-7x1g.10gb.txt")
        }
        "h100-mixed.toml" => Some("h100-3g-2g-2x1g.txt"),
        "full-gpu.toml" => Some("two-gpus-mig-off.txt"),
        _ => None,
    }
}

/// The TOML inside a ConfigMap's `config.toml: |` block.
fn embedded_toml(yaml: &str) -> Option<String> {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != "config.toml: |");
    lines.next()?;
    let body: Vec<&str> = lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.strip_prefix("    ").unwrap_or(""))
        .collect();
    Some(body.join("\n"))
}

/// Writes `text` with every `/models/X.gguf` pointing at a symlink to the real model; returns
/// the config's path.
fn with_real_model(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("migserve-deploy-{}", std::process::id()));
    let models = dir.join("models");
    std::fs::create_dir_all(&models).unwrap();
    let real = common::model_path();
    let mut out = String::new();
    for line in text.lines() {
        if let Some(start) = line.find("\"/models/") {
            let file = line[start + 9..].split('"').next().unwrap();
            let link = models.join(file);
            // Tests run in parallel and share the folder: another may have made the link.
            match std::os::unix::fs::symlink(&real, &link) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => panic!("{}: {e}", link.display()),
            }
            out.push_str(&line.replace(&format!("/models/{file}"), link.to_str().unwrap()));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    let path = dir.join(name.replace('/', "-").replace(".yaml", ".toml"));
    std::fs::write(&path, out).unwrap();
    path
}

/// `serve --check` on a config; the printed placement.
fn check(name: &str, config: &Path) -> Vec<String> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_migserve"));
    command.args(["serve", "--check", "--config", config.to_str().unwrap()]);
    if let Some(fixture) = inventory_for(name) {
        let path = root()
            .join("server/tests/fixtures/nvidia-smi")
            .join(fixture);
        command.args(["--inventory", path.to_str().unwrap()]);
    }
    let out = command
        .env("RUST_LOG", "warn")
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn every_config_in_configs_places() {
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(root().join("configs")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if !name.ends_with(".toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let placed = if text.contains("\"/models/") {
            check(&name, &with_real_model(&name, &text))
        } else {
            check(&name, &path)
        };
        let expected = match name.as_str() {
            "h100-7x1g.10gb.toml" => 7,
            "h100-mixed.toml" => 4,
            "full-gpu.toml" => 1,
            // Three pinned workers, one on-demand model.
            "local.toml" => 4,
            // Three pinned workers, ten on-demand models.
            "h100-catalogue.toml" => 13,
            "cpu-one-worker.toml" => 1,
            other => panic!("configs/{other} has no expectation here: add one"),
        };
        assert_eq!(placed.len(), expected, "{name}: {placed:?}");
        seen.push(name);
    }
    assert_eq!(seen.len(), 6, "{seen:?}");
}

#[test]
fn the_catalogue_config_pins_three_workers_and_fits_every_on_demand_model() {
    let name = "h100-catalogue.toml";
    let text = std::fs::read_to_string(root().join("configs").join(name)).unwrap();
    let placed = check(name, &with_real_model(name, &text));
    let pinned: Vec<&String> = placed.iter().filter(|l| l.starts_with("mig0-")).collect();
    assert_eq!(pinned.len(), 3, "{placed:?}");
    let on_demand: Vec<&String> = placed.iter().filter(|l| l.starts_with("-\t")).collect();
    assert_eq!(on_demand.len(), 10, "{placed:?}");
    // Half a 1g.10gb slice holds each of them: every slice is a candidate.
    assert!(
        on_demand
            .iter()
            .all(|l| l.ends_with("fits mig0-0,mig0-1,mig0-2,mig0-3,mig0-4,mig0-5,mig0-6")),
        "{on_demand:?}"
    );
}

#[test]
fn the_mixed_h100_config_puts_each_model_on_its_profile() {
    let name = "h100-mixed.toml";
    let text = std::fs::read_to_string(root().join("configs").join(name)).unwrap();
    let placed = check(name, &with_real_model(name, &text));
    let pairs: Vec<(String, String)> = placed
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[1].to_string(), f[2].to_string())
        })
        .collect();
    let expect = [
        ("3g.40gb", "llama-3.2-3b"),
        ("2g.20gb", "llama-3.2-1b"),
        ("1g.10gb", "smollm2-360m"),
        ("1g.10gb", "smollm2-360m"),
    ];
    assert_eq!(pairs, expect.map(|(p, m)| (p.to_string(), m.to_string())));
    assert!(
        placed.iter().all(|l| l.contains("\tCuda\t")),
        "MIG slices run on CUDA: {placed:?}"
    );
}

#[test]
fn the_migserve_configs_inside_the_kubernetes_manifests_place() {
    for (name, expected) in [
        ("node-serve/configmap.yaml", 7),
        ("slice-workers/router.yaml", 0),
    ] {
        let yaml = std::fs::read_to_string(root().join("deploy/k8s").join(name)).unwrap();
        let toml = embedded_toml(&yaml).unwrap_or_else(|| panic!("{name}: no config.toml"));
        let placed = check(name, &with_real_model(name, &toml));
        assert_eq!(placed.len(), expected, "{name}: {placed:?}");
    }
}
