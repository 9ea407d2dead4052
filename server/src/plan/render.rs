//! A plan as a mig-parted config (YAML) and the matching migserve config (TOML).

use std::fmt::Write;

use super::Plan;

/// The mig-parted config (`version: v1`, one named layout for every GPU of the node).
pub fn mig_parted(plan: &Plan, layout_name: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# mig-parted config for {} (apply with `nvidia-mig-parted apply -f FILE -c {layout_name}`",
        plan.gpu.name
    );
    let _ = writeln!(
        out,
        "# or the GPU Operator's mig-manager: label the node nvidia.com/mig.config={layout_name})."
    );
    let _ = writeln!(out, "version: v1");
    let _ = writeln!(out, "mig-configs:");
    let _ = writeln!(out, "  all-disabled:");
    let _ = writeln!(out, "    - devices: all");
    let _ = writeln!(out, "      mig-enabled: false");
    let _ = writeln!(out, "  {layout_name}:");
    let _ = writeln!(out, "    - devices: all");
    let _ = writeln!(out, "      mig-enabled: true");
    let _ = writeln!(out, "      mig-devices:");
    for (profile, count) in plan.profile_counts() {
        let _ = writeln!(out, "        \"{profile}\": {count}");
    }
    out
}

/// The migserve config placing each model on its slices (slices from NVML).
pub fn migserve_config(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# migserve config for the layout above ({}): `migserve serve --config FILE`.",
        plan.gpu.name
    );
    let _ = writeln!(
        out,
        "listen = \"0.0.0.0:8080\"\n\n[slices]\nsource = \"nvml\""
    );
    let placeholders: Vec<&str> = plan
        .placed
        .iter()
        .filter(|p| p.model.path.is_none())
        .map(|p| p.model.name.as_str())
        .collect();
    if !placeholders.is_empty() {
        let _ = writeln!(
            out,
            "# PLACEHOLDER paths: {} were given by size only; put each model's GGUF file or\n# Hugging Face directory in its `path` before serving.",
            placeholders.join(", ")
        );
    }
    for p in &plan.placed {
        let path = match &p.model.path {
            Some(path) => toml_string(path),
            None => format!(
                "{}  # PLACEHOLDER: no file was given for this model",
                toml_string(&format!("/models/{}.gguf", p.model.name))
            ),
        };
        let profiles: Vec<String> = (0..p.replicas)
            .map(|_| format!("\"{}\"", p.profile.name))
            .collect();
        let _ = writeln!(
            out,
            "\n# needs about {:.1} GB per worker; expected load {}\n[[models]]\nname = {}\npath = {}\nprofiles = [{}]",
            p.model.bytes as f64 / 1e9,
            p.model.load,
            toml_string(&p.model.name),
            path,
            profiles.join(", ")
        );
        // Only when asked: without it a GPU worker gives its KV cache what the weights leave.
        if let Some(kv) = p.model.kv_cache_tokens {
            let _ = writeln!(out, "[models.engine]\nkv_cache_tokens = {kv}");
        }
    }
    out
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A human summary: one line per model.
pub fn summary(plan: &Plan) -> String {
    let mut out = format!(
        "{}: {} of {} compute slices, {} of {} memory slices\n",
        plan.gpu.name,
        plan.compute(),
        plan.gpu.compute_slices,
        plan.memory_slices(),
        plan.gpu.memory_slices
    );
    for p in &plan.placed {
        let _ = writeln!(
            out,
            "  {:<24} {} x {:<8} (needs {:.1} GB, load {})",
            p.model.name,
            p.replicas,
            p.profile.name,
            p.model.bytes as f64 / 1e9,
            p.model.load
        );
    }
    out
}
