//! `migserve plan`: layouts for known model sets, refusals, and outputs that mig-parted and
//! `migserve serve` accept.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use yaml_rust2::{Yaml, YamlLoader};

fn plan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_migserve"))
        .arg("plan")
        .args(args)
        .output()
        .unwrap()
}

/// Checks the structure mig-parted reads: `version: v1`, and under `mig-configs` a list of
/// `{devices: all | [ints], mig-enabled: bool, mig-devices: {PROFILE: int}}` per layout.
fn assert_mig_parted_schema(doc: &Yaml) {
    assert_eq!(doc["version"].as_str(), Some("v1"));
    let configs = doc["mig-configs"].as_hash().expect("mig-configs map");
    assert!(!configs.is_empty());
    for (name, entries) in configs {
        let entries = entries
            .as_vec()
            .unwrap_or_else(|| panic!("{name:?}: a list"));
        for e in entries {
            let devices_ok = e["devices"].as_str() == Some("all")
                || e["devices"]
                    .as_vec()
                    .is_some_and(|v| v.iter().all(|d| d.as_i64().is_some()));
            assert!(devices_ok, "{name:?}: devices");
            let enabled = e["mig-enabled"].as_bool().expect("mig-enabled bool");
            if enabled {
                for (profile, count) in e["mig-devices"].as_hash().expect("mig-devices map") {
                    let p = profile.as_str().expect("profile name");
                    assert!(p.contains("g.") && p.ends_with("gb"), "{p}");
                    assert!(count.as_i64().is_some_and(|n| n > 0), "{p}: count");
                }
            }
        }
    }
}

#[test]
fn seven_smollm2_sized_models_on_an_h100_get_seven_1g_10gb() {
    let model = common::model_path();
    let models: Vec<String> = (1..=7)
        .map(|i| format!("model{i}={}", model.display()))
        .collect();
    let dir = std::env::temp_dir().join(format!("migserve-plan-{}", std::process::id()));
    let mut args = vec!["--gpu", "h100-80gb", "--out-dir", dir.to_str().unwrap()];
    for m in &models {
        args.extend(["--model", m.as_str()]);
    }
    let out = plan(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = std::fs::read_to_string(dir.join("mig-parted.yaml")).unwrap();
    let docs = YamlLoader::load_from_str(&yaml).expect("mig-parted output is YAML");
    assert_mig_parted_schema(&docs[0]);
    let layout = &docs[0]["mig-configs"]["migserve-plan"][0]["mig-devices"];
    assert_eq!(layout.as_hash().unwrap().len(), 1);
    assert_eq!(layout["1g.10gb"].as_i64(), Some(7));

    // The migserve config places on a real 7 x 1g.10gb H100 (recorded).
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/nvidia-smi/h100-7x1g.10gb.txt");
    let check = Command::new(env!("CARGO_BIN_EXE_migserve"))
        .args([
            "serve",
            "--check",
            "--config",
            dir.join("migserve.toml").to_str().unwrap(),
        ])
        .args(["--inventory", fixture.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let placed = String::from_utf8_lossy(&check.stdout).into_owned();
    assert_eq!(placed.lines().count(), 7, "{placed}");
    assert!(placed.lines().all(|l| l.contains("\t1g.10gb\t")));
    // The KV cache is left to the workers (on a GPU: what the weights leave of the slice).
    let toml = std::fs::read_to_string(dir.join("migserve.toml")).unwrap();
    assert!(!toml.contains("kv_cache_tokens"), "{toml}");
    assert!(!toml.contains("PLACEHOLDER"), "{toml}");
}

#[test]
fn a_fixed_cache_is_written_only_when_asked_and_placeholders_say_so() {
    let model = common::model_path();
    let with_file = format!("real={}", model.display());
    let out = plan(&[
        "--gpu",
        "h100",
        "--model",
        &with_file,
        "--model",
        "sized=3",
        "--kv-cache-tokens",
        "8192",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (_, toml) = text.split_once("---\n").unwrap();
    assert_eq!(toml.matches("kv_cache_tokens = 8192").count(), 2, "{toml}");
    assert!(
        toml.contains("# PLACEHOLDER paths: sized were given by size only"),
        "{toml}"
    );
    assert!(
        toml.contains("path = \"/models/sized.gguf\"  # PLACEHOLDER: no file was given"),
        "{toml}"
    );
    assert!(toml.contains(&format!(
        "path = \"{}\"\n",
        model.canonicalize().unwrap().display()
    )));
}

#[test]
fn every_mig_gpu_in_service_is_planned_within_its_own_slices() {
    // A30 and RTX PRO 6000 have four compute slices, not seven.
    let out = plan(&["--gpu", "a30", "--model", "a=5", "--model", "b=5"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("\"1g.6gb\": 4"), "{text}");
    let out = plan(&[
        "--gpu", "a30", "--model", "a=10", "--model", "b=10", "--model", "c=5",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("5 of 4 memory slices"), "{err}");
    for (gpu, profile) in [
        ("h100-nvl", "1g.12gb"),
        ("gh200", "1g.12gb"),
        ("h200-nvl", "1g.18gb"),
        ("gh200-144gb", "1g.18gb"),
        ("b200", "1g.23gb"),
        ("rtx-pro-6000", "1g.24gb"),
    ] {
        let out = plan(&["--gpu", gpu, "--model", "a=1"]);
        assert!(
            out.status.success(),
            "{gpu}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains(&format!("\"{profile}\":")), "{gpu}: {text}");
        assert!(
            !text.contains("+me"),
            "{gpu}: variants are not planned: {text}"
        );
    }
}

#[test]
fn loads_and_sizes_shape_the_layout_and_the_yaml_parses() {
    let out = plan(&[
        "--gpu",
        "h100",
        "--model",
        "chat=30:4",
        "--model",
        "code=15:1",
        "--model",
        "tiny=2:1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (yaml, toml) = text.split_once("---\n").unwrap();
    let doc = &YamlLoader::load_from_str(yaml).unwrap()[0];
    assert_mig_parted_schema(doc);
    let devices = &doc["mig-configs"]["migserve-plan"][0]["mig-devices"];
    assert_eq!(devices["3g.40gb"].as_i64(), Some(1));
    assert_eq!(devices["1g.20gb"].as_i64(), Some(1));
    assert!(devices["1g.10gb"].as_i64().unwrap() >= 1);
    assert!(toml.contains("name = \"chat\"") && toml.contains("profiles = [\"3g.40gb\"]"));
}

#[test]
fn a_mix_that_cannot_fit_is_refused_with_the_reason() {
    let out = plan(&[
        "--gpu", "h100", "--model", "a=35", "--model", "b=35", "--model", "c=5",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("do not fit one h100-80gb")
            && err.contains("a 3g.40gb, b 3g.40gb, c 1g.10gb")
            && err.contains("9 of 8 memory slices"),
        "{err}"
    );
    let out = plan(&["--gpu", "h100", "--model", "giant=120"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"giant\" needs 120.0 GB"));
    let out = plan(&["--gpu", "tpu-v5", "--model", "a=1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown GPU type"));
}
