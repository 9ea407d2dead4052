//! Slice discovery from recorded `nvidia-smi -L` texts, JSON inventories and the CLI.

use std::path::PathBuf;
use std::process::Command;

use migserve::slices::inventory::parse_inventory;
use migserve::slices::{Slice, SliceKind};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/nvidia-smi")
        .join(name)
}

fn parse(name: &str) -> Vec<Slice> {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    parse_inventory(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn profiles(slices: &[Slice]) -> Vec<&str> {
    slices.iter().map(|s| s.profile.as_str()).collect()
}

#[test]
fn h100_as_seven_1g_10gb() {
    let slices = parse("h100-7x1g.10gb.txt");
    assert_eq!(profiles(&slices), vec!["1g.10gb"; 7]);
    assert!(slices.iter().all(|s| s.kind == SliceKind::Mig));
    assert!(slices
        .iter()
        .all(|s| s.uuid.starts_with("MIG-") && s.uuid.len() == 40));
    assert_eq!(slices[0].uuid, "MIG-d23f0824-128b-4f33-8c5c-7fd0a6a3a450");
    assert_eq!(slices[6].uuid, "MIG-a170b338-3926-4059-b28c-105d1fb17c23");
    assert_eq!(slices[3].id, "mig0-3");
    assert!(slices.iter().all(|s| s.gpu_uuid.as_deref()
        == Some("GPU-6513270e-269e-4d37-b2a7-4de452e6b438")
        && s.gpu_index == Some(0)));
    assert!(slices
        .iter()
        .all(|s| s.memory_bytes == Some(10_000_000_000) && s.sm_count == Some(16)));
}

#[test]
fn rtx_pro_6000_and_h100_nvl_profiles_and_variants() {
    let slices = parse("rtx-pro-6000-mixed.txt");
    assert_eq!(
        profiles(&slices),
        ["2g.48gb+gfx", "1g.24gb", "1g.24gb-me", "1g.12gb"]
    );
    let memory: Vec<Option<u64>> = slices.iter().map(|s| s.memory_bytes).collect();
    assert_eq!(
        memory,
        [48, 24, 24, 12].map(|gb| Some(gb * 1_000_000_000u64))
    );
    let sms: Vec<Option<u32>> = slices.iter().map(|s| s.sm_count).collect();
    assert_eq!(sms, [Some(92), Some(46), Some(46), Some(16)]);
    assert_eq!(slices[3].gpu_index, Some(1));
    assert_eq!(slices[3].id, "mig1-0");
}

#[test]
fn h100_mixed_profiles() {
    let slices = parse("h100-mixed.txt");
    assert_eq!(profiles(&slices), ["3g.40gb", "2g.20gb", "1g.10gb"]);
    let uuids: Vec<&str> = slices.iter().map(|s| s.uuid.as_str()).collect();
    assert_eq!(
        uuids,
        [
            "MIG-0cb1e29c-658c-4a14-95e6-0af593bd04cf",
            "MIG-8e81973e-0bec-47b0-b898-d190f9ebdacc",
            "MIG-6b4cb242-4a23-4596-a217-beaddbc496cb"
        ]
    );
    let sms: Vec<Option<u32>> = slices.iter().map(|s| s.sm_count).collect();
    assert_eq!(sms, [Some(48), Some(32), Some(16)]);
}

#[test]
fn two_gpus_with_mig_off_are_two_full_slices() {
    let slices = parse("two-gpus-mig-off.txt");
    assert_eq!(profiles(&slices), ["full", "full"]);
    assert!(slices.iter().all(|s| s.kind == SliceKind::Gpu));
    assert_eq!(slices[0].uuid, "GPU-92276658-1e27-41c0-8a6a-63ec24ede6a4");
    assert_eq!(slices[1].uuid, "GPU-ae97ba94-d0ed-482f-8f6d-05584ef8aa38");
    assert_eq!(slices[1].id, "gpu1");
    assert_eq!(slices[1].gpu_index, Some(1));
    assert_eq!(slices[0].memory_bytes, Some(80_000_000_000));
}

#[test]
fn a100_with_the_old_mig_naming() {
    let slices = parse("a100-old-naming.txt");
    assert_eq!(profiles(&slices), ["3g.20gb", "2g.10gb", "1g.5gb"]);
    assert_eq!(
        slices[1].uuid,
        "MIG-GPU-923a7369-94e3-4f91-9a61-dbe22e44158b/5/0"
    );
    let ids: Vec<(Option<u32>, Option<u32>)> = slices
        .iter()
        .map(|s| (s.gpu_instance, s.compute_instance))
        .collect();
    assert_eq!(
        ids,
        [(Some(1), Some(0)), (Some(5), Some(0)), (Some(13), Some(0))]
    );
    assert_eq!(slices[0].sm_count, Some(42));
    assert_eq!(slices[2].memory_bytes, Some(5_000_000_000));
}

#[test]
fn json_inventory_round_trips() {
    let slices = parse("h100-mixed.txt");
    let json = serde_json::to_string(&slices).unwrap();
    assert_eq!(parse_inventory(&json).unwrap(), slices);
    let wrapped = format!("{{\"slices\": {json}}}");
    assert_eq!(parse_inventory(&wrapped).unwrap(), slices);
}

#[test]
fn malformed_inventories_are_refused_with_the_line() {
    for (text, expect) in [
        (
            "  MIG 1g.10gb Device 0: (UUID: MIG-x)\n",
            "before any GPU line",
        ),
        (
            "GPU 0: H100 (UUID: GPU-a)\n  MIG 9g.10gb Device 0: (UUID: MIG-x)\n",
            "unknown MIG profile",
        ),
        ("GPU 0: H100\n", "no (UUID"),
        ("hello\n", "neither a GPU nor a MIG line"),
        ("", "no GPU lines"),
        (
            "GPU 0: H100 (UUID: GPU-a)\nGPU 1: H100 (UUID: GPU-a)\n",
            "share an id or UUID",
        ),
        ("[{\"id\": 1}]", "invalid JSON"),
    ] {
        let err = parse_inventory(text).unwrap_err();
        assert!(err.contains(expect), "{text:?}: {err}");
    }
}

fn migserve(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_migserve"))
        .args(args)
        .output()
        .expect("run migserve")
}

#[test]
fn cli_lists_an_inventory_as_a_table_and_json() {
    let path = fixture("h100-mixed.txt");
    let out = migserve(&["slices", "--inventory", path.to_str().unwrap()]);
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(
        table.contains("mig0-0")
            && table.contains("3g.40gb")
            && table.contains("MIG-8e81973e-0bec-47b0-b898-d190f9ebdacc")
    );
    let out = migserve(&["slices", "--json", "--inventory", path.to_str().unwrap()]);
    let listed: Vec<Slice> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed, parse("h100-mixed.txt"));
}

#[test]
fn cli_without_a_driver_says_so_and_exits_cleanly() {
    let has_driver = [
        "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
        "/usr/lib64/libnvidia-ml.so.1",
    ]
    .iter()
    .any(|p| std::path::Path::new(p).exists());
    if has_driver {
        println!("skipped: this machine has an NVIDIA driver, the no-driver path cannot be shown");
        return;
    }
    let out = migserve(&["slices"]);
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no NVIDIA driver"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn cli_lists_emulated_slices() {
    let out = migserve(&["slices", "--emulate", "2x1g.10gb,3g.40gb", "--json"]);
    assert!(out.status.success());
    let listed: Vec<Slice> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(profiles(&listed), ["1g.10gb", "1g.10gb", "3g.40gb"]);
    assert!(listed
        .iter()
        .all(|s| s.kind == SliceKind::Cpu && !s.cpus.is_empty()));
    let out = migserve(&["slices", "--emulate", "8g.10gb"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a MIG profile"));
}
