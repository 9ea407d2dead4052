//! `migserve serve --check`: configs are validated and placed before anything starts; bad
//! ones are refused with one clear line.

mod common;

use std::path::PathBuf;
use std::process::Command;

/// Writes `text` (with `{model}` replaced by the real model's path) to a fresh config file.
fn config_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("migserve-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.toml"));
    let model = common::model_path();
    std::fs::write(&path, text.replace("{model}", model.to_str().unwrap())).unwrap();
    path
}

/// Runs `serve --check` on a config: (success, stdout, stderr).
fn check(name: &str, text: &str) -> (bool, String, String) {
    let path = config_file(name, text);
    let out = Command::new(env!("CARGO_BIN_EXE_migserve"))
        .args(["serve", "--check", "--config", path.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn refused(name: &str, text: &str, expect: &[&str]) {
    let (ok, _, stderr) = check(name, text);
    assert!(!ok, "{name}: accepted");
    assert_eq!(stderr.lines().count(), 1, "{name}: not one line: {stderr}");
    for part in expect {
        assert!(stderr.contains(part), "{name}: {stderr:?} lacks {part:?}");
    }
}

const SLICES: &str = "[slices]\nsource = \"emulate\"\nemulate = \"3x1g.10gb\"\n";

#[test]
fn a_good_config_places_one_worker_per_slice() {
    let (ok, stdout, stderr) = check(
        "good",
        &format!("{SLICES}[[models]]\nname = \"smol\"\npath = \"{{model}}\"\nreplicas = 3\n"),
    );
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for (i, line) in lines.iter().enumerate() {
        assert!(
            line.starts_with(&format!("cpu{i}\t1g.10gb\tsmol\tCpu\t")),
            "{line}"
        );
    }
}

#[test]
fn profiles_and_explicit_slices_are_honoured() {
    let (ok, stdout, stderr) = check(
        "mixed",
        "[slices]\nsource = \"emulate\"\nemulate = \"3g.40gb,2g.20gb,1g.10gb\"\n\
         [[models]]\nname = \"a\"\npath = \"{model}\"\nprofiles = [\"1g.10gb\"]\n\
         [[models]]\nname = \"b\"\npath = \"{model}\"\nslices = [\"cpu0\"]\n\
         [[models]]\nname = \"c\"\npath = \"{model}\"\n",
    );
    assert!(ok, "{stderr}");
    let placed: Vec<(String, String)> = stdout
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].to_string(), f[2].to_string())
        })
        .collect();
    let expect = [("cpu0", "b"), ("cpu1", "c"), ("cpu2", "a")];
    assert_eq!(placed, expect.map(|(s, m)| (s.to_string(), m.to_string())));
}

#[test]
fn an_unknown_model_path_is_refused() {
    refused(
        "missing-model",
        &format!("{SLICES}[[models]]\nname = \"smol\"\npath = \"/nowhere/model.gguf\"\n"),
        &["model \"smol\"", "/nowhere/model.gguf", "does not exist"],
    );
}

#[test]
fn an_unknown_profile_is_refused() {
    refused(
        "bad-profile",
        &format!(
            "{SLICES}[[models]]\nname = \"smol\"\npath = \"{{model}}\"\nprofiles = [\"huge\"]\n"
        ),
        &["model \"smol\"", "unknown profile \"huge\""],
    );
    refused(
        "absent-profile",
        &format!(
            "{SLICES}[[models]]\nname = \"smol\"\npath = \"{{model}}\"\nprofiles = [\"3g.40gb\"]\n"
        ),
        &[
            "model \"smol\"",
            "profile 3g.40gb",
            "no slice has it",
            "cpu0 1g.10gb",
        ],
    );
}

#[test]
fn more_replicas_than_slices_are_refused() {
    refused(
        "replicas",
        &format!("{SLICES}[[models]]\nname = \"smol\"\npath = \"{{model}}\"\nreplicas = 4\n"),
        &[
            "model \"smol\" (pinned) found no room",
            "already holds a replica of \"smol\"",
            "cpu0 holds smol, cpu1 holds smol, cpu2 holds smol",
        ],
    );
}

#[test]
fn a_pinned_model_without_room_is_refused_naming_who_took_the_slices() {
    // The report this replaces blamed "0 of 3 slices are free" on the second model.
    refused(
        "taken",
        &format!(
            "{SLICES}[lifecycle]\nmax_models_per_slice = 1\n\
             [[models]]\nname = \"smol\"\npath = \"{{model}}\"\nreplicas = 3\n\
             [[models]]\nname = \"gemma\"\npath = \"{{model}}\"\n"
        ),
        &[
            "model \"gemma\" (pinned) found no room",
            "cpu0 holds smol, cpu1 holds smol, cpu2 holds smol",
            "replicas = 0 to load it on demand",
        ],
    );
}

#[test]
fn on_demand_models_are_listed_with_the_slices_they_fit() {
    let (ok, stdout, stderr) = check(
        "on-demand",
        &format!(
            "{SLICES}[[models]]\nname = \"smol\"\npath = \"{{model}}\"\nreplicas = 2\n\
             [[models]]\nname = \"later\"\npath = \"{{model}}\"\nreplicas = 0\n"
        ),
    );
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[0].starts_with("cpu0\t1g.10gb\tsmol\t"), "{stdout}");
    assert!(lines[1].starts_with("cpu1\t1g.10gb\tsmol\t"), "{stdout}");
    assert!(
        lines[2].starts_with("-\t-\tlater\ton-demand\t")
            && lines[2].ends_with("fits cpu0,cpu1,cpu2"),
        "{stdout}"
    );
}

#[test]
fn a_model_too_big_for_its_slice_is_refused_naming_both() {
    refused(
        "too-big",
        "[slices]\nsource = \"emulate\"\nemulate = \"1g.1gb\"\n\
         [[models]]\nname = \"smol\"\npath = \"{model}\"\n[models.engine]\nkv_cache_tokens = 100000\n",
        &["model \"smol\"", "needs about", "slice cpu0 (1g.1gb) has 1.00 GB"],
    );
}

#[test]
fn unknown_keys_are_refused() {
    refused(
        "unknown-key",
        &format!("{SLICES}[[models]]\nname = \"smol\"\npath = \"{{model}}\"\nreplica = 3\n"),
        &["unknown field `replica`"],
    );
    refused(
        "unknown-section",
        &format!("{SLICES}[supervisr]\nmax_crashes = 3\n[[models]]\nname = \"smol\"\npath = \"{{model}}\"\n"),
        &["unknown field `supervisr`"],
    );
}

/// `serve --check` on the embedded default, run from `dir`: its placement lines.
fn check_embedded(dir: &std::path::Path) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_migserve"))
        .args(["serve", "--check"])
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn the_embedded_default_is_valid() {
    let lines = check_embedded(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."));
    assert_eq!(
        lines.len(),
        4,
        "three workers placed, one model on demand: {lines:?}"
    );
    assert!(lines[3].starts_with("-\t-\tSmolLM2-135M-Instruct-f32\ton-demand\t"));
}

#[test]
fn the_embedded_default_finds_its_model_from_any_directory() {
    // Not the repository root: the config is found above the binary (target/debug/).
    assert_eq!(check_embedded(&std::env::temp_dir()).len(), 4);
}
