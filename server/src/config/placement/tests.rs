use super::*;

const GB: u64 = 1_000_000_000;

fn slices(spec: &[u64]) -> Vec<Slice> {
    spec.iter()
        .enumerate()
        .map(|(i, gb)| crate::slices::test_slice(i, *gb))
        .collect()
}

/// A config from TOML (not validated: the model files need not exist) and footprints of
/// `gb` per model on the CPU.
fn setup(toml_text: &str, gb: &[(&str, f64)]) -> (DeployConfig, Footprints) {
    let config: DeployConfig = toml::from_str(toml_text).unwrap();
    let mut footprints = Footprints::default();
    for (name, size) in gb {
        footprints
            .0
            .insert((name.to_string(), false), Ok((size * GB as f64) as u64));
    }
    (config, footprints)
}

fn placed(plan: &PinnedPlan) -> Vec<(String, String, Option<u64>)> {
    plan.start
        .iter()
        .map(|a| (a.slice.id.clone(), a.model.name.clone(), a.share_bytes))
        .collect()
}

fn row(slice: &str, model: &str, share: Option<u64>) -> (String, String, Option<u64>) {
    (slice.into(), model.into(), share)
}

#[test]
fn pinned_models_alone_get_whole_slices() {
    let (config, mut fp) = setup(
        "[[models]]\nname = \"a\"\npath = \"a\"\nreplicas = 2\n[[models]]\nname = \"b\"\npath = \"b\"\n",
        &[("a", 0.6), ("b", 0.7)],
    );
    let s = slices(&[10, 10, 10]);
    let sharing = Sharing::of(&config, s.len());
    assert_eq!(sharing, Sharing::Whole);
    let plan = place_pinned(&config, &s, sharing, &[], &mut fp).unwrap();
    assert_eq!(
        placed(&plan),
        [
            row("cpu0", "a", None),
            row("cpu1", "a", None),
            row("cpu2", "b", None)
        ]
    );
}

#[test]
fn more_models_than_slices_share_them_by_footprint() {
    let (config, mut fp) = setup(
        "[[models]]\nname = \"a\"\npath = \"a\"\nreplicas = 2\n[[models]]\nname = \"b\"\npath = \"b\"\n",
        &[("a", 0.6), ("b", 0.7)],
    );
    let s = slices(&[2, 2]);
    let sharing = Sharing::of(&config, s.len());
    assert_eq!(sharing, Sharing::Fit);
    let plan = place_pinned(&config, &s, sharing, &[], &mut fp).unwrap();
    // a spreads over both; b joins the first with room.
    assert_eq!(
        placed(&plan),
        [
            row("cpu0", "a", Some(600_000_000)),
            row("cpu0", "b", Some(700_000_000)),
            row("cpu1", "a", Some(600_000_000)),
        ]
    );
}

#[test]
fn an_unplaceable_pin_names_the_model_and_who_took_the_slices() {
    let (mut config, mut fp) = setup(
        "[lifecycle]\nmax_models_per_slice = 1\n[[models]]\nname = \"smol\"\npath = \"a\"\nreplicas = 3\n[[models]]\nname = \"gemma\"\npath = \"b\"\n",
        &[("smol", 0.6), ("gemma", 0.7)],
    );
    let s = slices(&[10, 10, 10]);
    let err = place_pinned(&config, &s, Sharing::of(&config, 3), &[], &mut fp)
        .unwrap_err()
        .to_string();
    assert!(err.contains("model \"gemma\" (pinned)"), "{err}");
    assert!(
        err.contains("cpu0 holds smol, cpu1 holds smol, cpu2 holds smol"),
        "{err}"
    );
    assert!(err.contains("replicas = 0"), "{err}");
    // Too big for any share: the sizes are in the message.
    config.lifecycle.max_models_per_slice = Some(20);
    let err = place_pinned(&config, &s, Sharing::of(&config, 3), &[], &mut fp)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model \"smol\" needs about 0.60 GB but a 1/20 share of slice")
            && err.contains("(1g.10gb) has 0.50 GB"),
        "{err}"
    );
}

#[test]
fn equal_shares_split_the_slice() {
    let (config, mut fp) = setup(
        "[lifecycle]\nmax_models_per_slice = 2\n[[models]]\nname = \"a\"\npath = \"a\"\n[[models]]\nname = \"b\"\npath = \"b\"\n[[models]]\nname = \"c\"\npath = \"c\"\nreplicas = 0\n",
        &[("a", 0.6), ("b", 0.7)],
    );
    let s = slices(&[2]);
    let sharing = Sharing::of(&config, 1);
    assert_eq!(sharing, Sharing::Equal(2));
    let plan = place_pinned(&config, &s, sharing, &[], &mut fp).unwrap();
    assert_eq!(
        placed(&plan),
        [row("cpu0", "a", Some(GB)), row("cpu0", "b", Some(GB))],
        "the on-demand model is not placed"
    );
}

#[test]
fn a_reload_keeps_running_pins_and_finds_the_surplus() {
    let (config, mut fp) = setup(
        "[[models]]\nname = \"a\"\npath = \"a\"\nreplicas = 1\n[[models]]\nname = \"b\"\npath = \"b\"\nslices = [\"cpu2\"]\n",
        &[("a", 0.6), ("b", 0.7)],
    );
    let s = slices(&[10, 10, 10]);
    let kept = [
        Kept {
            model: "a".into(),
            slice: 1,
            bytes: 10 * GB,
        },
        Kept {
            model: "a".into(),
            slice: 0,
            bytes: 10 * GB,
        },
        Kept {
            model: "b".into(),
            slice: 0,
            bytes: 10 * GB,
        },
    ];
    let plan = place_pinned(&config, &s, Sharing::Whole, &kept, &mut fp).unwrap();
    // One a stays (the first that satisfies its pin); the other a and the b on the wrong
    // slice are surplus; b is placed on cpu2.
    assert_eq!(plan.surplus, [1, 2]);
    assert_eq!(placed(&plan), [row("cpu2", "b", None)]);
}

#[test]
fn unknown_slices_and_profiles_are_refused() {
    let (config, mut fp) = setup(
        "[[models]]\nname = \"a\"\npath = \"a\"\nslices = [\"mig9\"]\n",
        &[("a", 0.6)],
    );
    let s = slices(&[10]);
    let err = place_pinned(&config, &s, Sharing::Whole, &[], &mut fp)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("names slice \"mig9\", which does not exist"),
        "{err}"
    );
    let (config, mut fp) = setup(
        "[[models]]\nname = \"a\"\npath = \"a\"\nprofiles = [\"3g.40gb\"]\n",
        &[("a", 0.6)],
    );
    let err = place_pinned(&config, &s, Sharing::Whole, &[], &mut fp)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("profile 3g.40gb, but no slice has it"),
        "{err}"
    );
}
