//! The Dockerfile, checked without a Docker engine: its instructions are parsed (line
//! continuations joined) and held to what the image must be: a multi-stage build on the
//! CUDA 13.0 devel image with `--features cuda`, the matching runtime image, a non-root user,
//! `migserve serve` as entrypoint, a health check on the front's `/health`, models mounted
//! rather than copied, and the config it starts with present in `configs/`.

use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// (instruction, arguments) pairs, comments dropped, continuations joined.
fn instructions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(body) = trimmed.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (op, args) = current.split_once(' ').unwrap_or((&current, ""));
        out.push((op.to_uppercase(), args.trim().to_string()));
        current.clear();
    }
    assert!(current.is_empty(), "Dockerfile ends inside a continuation");
    out
}

fn args_of<'a>(ins: &'a [(String, String)], op: &str) -> Vec<&'a str> {
    ins.iter()
        .filter(|(o, _)| o == op)
        .map(|(_, a)| a.as_str())
        .collect()
}

#[test]
fn dockerfile_builds_with_cuda_and_runs_serve_as_a_non_root_user() {
    let ins = instructions();
    let known = [
        "ARG",
        "FROM",
        "RUN",
        "ENV",
        "WORKDIR",
        "COPY",
        "USER",
        "VOLUME",
        "EXPOSE",
        "HEALTHCHECK",
        "ENTRYPOINT",
        "CMD",
    ];
    for (op, _) in &ins {
        assert!(known.contains(&op.as_str()), "unexpected instruction {op}");
    }
    let args: Vec<&str> = args_of(&ins, "ARG");
    assert!(args.contains(&"CUDA_VERSION=13.0.1"), "{args:?}");

    let froms = args_of(&ins, "FROM");
    assert_eq!(froms.len(), 2, "two stages: {froms:?}");
    assert!(
        froms[0].starts_with("nvidia/cuda:${CUDA_VERSION}-devel-")
            && froms[0].ends_with(" AS build"),
        "{}",
        froms[0]
    );
    assert!(
        froms[1].starts_with("nvidia/cuda:${CUDA_VERSION}-runtime-"),
        "{}",
        froms[1]
    );
    let first_runtime = ins.iter().rposition(|(o, _)| o == "FROM").unwrap();
    let (build, runtime) = ins.split_at(first_runtime);

    let build_runs = args_of(build, "RUN").join("\n");
    assert!(
        build_runs.contains("cargo build --release --locked -p migserve --features cuda"),
        "{build_runs}"
    );
    // The runtime stage takes only the binary and the configs from the build.
    let copies = args_of(runtime, "COPY");
    assert!(copies.contains(&"--from=build /src/target/release/migserve /usr/local/bin/migserve"));
    for c in &copies {
        assert!(
            !c.contains("gguf") && !c.contains("models"),
            "models are mounted: {c}"
        );
    }
    assert_eq!(args_of(runtime, "VOLUME"), ["[\"/models\"]"]);

    let user = args_of(runtime, "USER");
    assert_eq!(user.len(), 1);
    assert!(
        !user[0].starts_with("root") && !user[0].starts_with("0"),
        "{user:?}"
    );
    // USER comes before the entrypoint runs and after every RUN that needs root.
    let user_at = runtime.iter().position(|(o, _)| o == "USER").unwrap();
    assert!(runtime[user_at..].iter().all(|(o, _)| o != "RUN"));

    assert_eq!(
        args_of(runtime, "ENTRYPOINT"),
        ["[\"migserve\", \"serve\"]"]
    );
    let health = args_of(runtime, "HEALTHCHECK");
    assert_eq!(health.len(), 1);
    assert!(
        health[0].contains("CMD curl -fsS http://127.0.0.1:8080/health"),
        "{}",
        health[0]
    );
    let cmd: Vec<String> = serde_json::from_str(args_of(runtime, "CMD")[0]).expect("CMD is JSON");
    assert_eq!(cmd[0], "--config");
    let config = cmd[1]
        .strip_prefix("/etc/migserve/")
        .expect("config under /etc/migserve");
    assert!(
        root().join(config).is_file(),
        "{config} is in the repository"
    );
    assert!(
        cmd.contains(&"0.0.0.0:8080".to_string()),
        "listens where EXPOSE and the check say"
    );
    assert_eq!(args_of(runtime, "EXPOSE"), ["8080"]);
}

#[test]
fn docker_context_leaves_out_build_outputs_and_models() {
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    for path in ["target/", "models-data/", ".tools/"] {
        assert!(ignore.lines().any(|l| l.trim() == path), "{path} ignored");
    }
}
