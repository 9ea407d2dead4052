//! The README and `docs/` are checkable: every command they show is checked here.
//!
//! - Synopses (unlabelled blocks starting `migserve SUB` or `loadtest SUB`) name exactly the
//!   flags of that subcommand (from its `--help`): none that does not exist, none missing
//!   (a synopsis that says `[load options]` may leave out `loadtest run`'s).
//! - `migserve` / `loadtest` command lines in `sh` blocks (also after `cargo run ... --` and
//!   `./target/release/`) use only flags the binaries have; the benchmark binaries and the
//!   fake worker (not built by `cargo test`) only flags their argument structs declare.
//! - `curl` lines run against a real `migserve serve` on the embedded default config (port
//!   8080 in the docs) or a real worker (8081), and must answer; a line followed by a
//!   `# 422 ...` comment must answer that error.
//! - Every repository path a command names (`scripts/`, `configs/`, `deploy/`, ...) exists,
//!   and every `cargo ... -p NAME` names a workspace package. Commands for other tools
//!   (nvidia-smi, docker, kubectl) need a GPU host or a cluster: for them only these paths
//!   are checked.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{spawn_until_line, Serve, Worker};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A fenced code block: file, language tag, text.
struct Block {
    file: String,
    lang: String,
    text: String,
}

fn blocks() -> Vec<Block> {
    let mut files = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            let Some(lang) = line.strip_prefix("```") else {
                continue;
            };
            let body: Vec<&str> = lines
                .by_ref()
                .take_while(|l| !l.starts_with("```"))
                .collect();
            out.push(Block {
                file: name.clone(),
                lang: lang.trim().to_string(),
                text: body.join("\n"),
            });
        }
    }
    out
}

/// The binary a command names: migserve, or a sibling in the target dir (loadtest).
fn binary(name: &str) -> PathBuf {
    let migserve = PathBuf::from(env!("CARGO_BIN_EXE_migserve"));
    let path = migserve.with_file_name(name);
    assert!(
        path.is_file(),
        "{} missing: run `cargo test` at the workspace root",
        path.display()
    );
    path
}

/// The `--flags` a subcommand's `--help` lists (without --help / --version / global ones).
fn help_flags(program: &str, sub: &str) -> BTreeSet<String> {
    let out = Command::new(binary(program))
        .args([sub, "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{program} {sub} --help failed");
    let globals = ["--help", "--version", "--log-format"];
    flags(&String::from_utf8_lossy(&out.stdout))
        .into_iter()
        .filter(|f| !globals.contains(&f.as_str()))
        .collect()
}

/// Every `--flag` in `text`.
fn flags(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("--") {
        let start = i + at;
        let mut end = start + 2;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'-') {
            end += 1;
        }
        let before_ok = start == 0 || !bytes[start - 1].is_ascii_alphanumeric();
        if before_ok && end > start + 2 && bytes[start + 2].is_ascii_alphabetic() {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

/// The commands of a synopsis block: a line starting with a binary name begins one.
fn synopsis_commands(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with("migserve ") || line.starts_with("loadtest ") {
            out.push(line.to_string());
        } else if let Some(last) = out.last_mut() {
            last.push(' ');
            last.push_str(line);
        }
    }
    out
}

#[test]
fn every_synopsis_names_exactly_its_subcommands_flags() {
    let mut checked = 0;
    let mut problems = Vec::new();
    for block in blocks().iter().filter(|b| b.lang.is_empty()) {
        for command in synopsis_commands(&block.text) {
            let mut words = command.split_whitespace();
            let (program, sub) = (words.next().unwrap(), words.next().unwrap());
            let have = help_flags(program, sub);
            let shown = flags(&command);
            let unknown: Vec<_> = shown.difference(&have).collect();
            if !unknown.is_empty() {
                problems.push(format!(
                    "{}: `{program} {sub}` has no {unknown:?}",
                    block.file
                ));
            }
            let mut may_omit = BTreeSet::new();
            if command.contains("[load options]") || command.contains("[...]") {
                may_omit = help_flags("loadtest", "run");
            }
            let missing: Vec<_> = have
                .difference(&shown)
                .filter(|f| !may_omit.contains(*f))
                .collect();
            if !missing.is_empty() {
                problems.push(format!(
                    "{}: the `{program} {sub}` synopsis misses {missing:?}",
                    block.file
                ));
            }
            checked += 1;
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(checked >= 8, "only {checked} synopses found");
}

/// Splits a shell line into words (single and double quotes, backslashes).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                word.extend(chars.next());
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(word);
    }
    out
}

/// Scans shell text for quotes: where a `#` comment outside quotes starts, if one does, and
/// whether a quote is still open at the end.
fn scan(text: &str) -> (Option<usize>, bool) {
    let mut quote = None;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if std::mem::take(&mut escaped) {
            continue;
        }
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (None, '\'' | '"') => quote = Some(c),
            (None, '\\') => escaped = true,
            (None, '#') if text[..i].chars().last().is_none_or(char::is_whitespace) => {
                return (Some(i), false);
            }
            _ => {}
        }
    }
    (None, quote.is_some())
}

/// The logical lines of a shell block (continuations and lines inside quotes joined), each
/// split into the command and its trailing comment (`# ...` outside quotes).
fn shell_lines(text: &str) -> Vec<(String, String)> {
    let mut logical: Vec<String> = Vec::new();
    let mut pending = String::new();
    let mut continued = false;
    for line in text.lines() {
        if !pending.is_empty() && !continued {
            pending.push('\n');
        }
        pending.push_str(line);
        continued = pending.ends_with('\\');
        if continued {
            pending.pop();
            pending.push(' ');
            continue;
        }
        if !scan(&pending).1 {
            logical.push(std::mem::take(&mut pending));
        }
    }
    logical.extend((!pending.is_empty()).then_some(pending));
    logical
        .into_iter()
        .map(|line| match scan(&line).0 {
            Some(i) => (line[..i].trim().to_string(), line[i..].to_string()),
            None => (line.trim().to_string(), String::new()),
        })
        .filter(|(l, c)| !l.is_empty() || !c.is_empty())
        .collect()
}

/// Workspace package names.
fn packages() -> BTreeSet<String> {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let members = manifest
        .split("members = [")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .unwrap();
    members
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty())
        .map(|dir| {
            let toml = std::fs::read_to_string(root().join(dir).join("Cargo.toml")).unwrap();
            let name = toml
                .lines()
                .find_map(|l| l.strip_prefix("name = "))
                .unwrap();
            name.trim_matches('"').to_string()
        })
        .collect()
}

/// Checks one command (no curl): flags of migserve / loadtest, packages, repository paths.
fn check_command(file: &str, command: &[String], packages: &BTreeSet<String>) {
    let mut w: Vec<&str> = command.iter().map(String::as_str).collect();
    while w.first().is_some_and(|x| *x == "sudo" || x.contains('=')) {
        w.remove(0);
    }
    let Some(&first) = w.first() else { return };
    for word in &w[1..] {
        let repo_dirs = [
            "scripts/", "configs/", "deploy/", "docs/", "bench/", "kernels/",
        ];
        if repo_dirs.iter().any(|d| word.starts_with(d)) {
            assert!(
                root().join(word).exists(),
                "{file}: `{}` names {word}, which does not exist",
                command.join(" ")
            );
        }
    }
    let program = first.rsplit('/').next().unwrap_or(first);
    if first == "cargo" {
        for pair in w.windows(2).filter(|p| p[0] == "-p") {
            assert!(packages.contains(pair[1]), "{file}: no package {}", pair[1]);
        }
        if let Some(rest) = w.iter().position(|x| *x == "--") {
            check_command(
                file,
                &std::iter::once("migserve".to_string())
                    .chain(w[rest + 1..].iter().map(|s| s.to_string()))
                    .collect::<Vec<_>>(),
                packages,
            );
        }
        return;
    }
    // Binaries `cargo test` does not build (benchmarks, the fake worker): each flag must be a
    // field of the arguments struct in their source.
    let sources = [
        root().join(format!("bench/tools/src/bin/{program}.rs")),
        root().join("testkit/src/main.rs"),
    ];
    let source = match program {
        "migserve-fake-worker" => Some(&sources[1]),
        _ => Some(&sources[0]).filter(|p| p.is_file()),
    };
    if let Some(source) = source {
        let text = std::fs::read_to_string(source).unwrap();
        for flag in flags(&w[1..].join(" ")) {
            let field = flag.trim_start_matches("--").replace('-', "_");
            assert!(
                text.contains(&format!(" {field}: ")),
                "{file}: `{program}` has no {flag} ({} has no field `{field}`)",
                source.display()
            );
        }
        return;
    }
    if program == "migserve" || program == "loadtest" {
        let Some(sub) = w.get(1).copied().filter(|s| !s.starts_with('-')) else {
            return; // `migserve --help`
        };
        let have = help_flags(program, sub);
        for flag in flags(&w[1..].join(" ")) {
            assert!(
                have.contains(&flag),
                "{file}: `{program} {sub}` has no {flag}"
            );
        }
    }
}

#[test]
fn shell_commands_use_real_flags_packages_and_paths() {
    let packages = packages();
    let mut checked = 0;
    for block in blocks().iter().filter(|b| b.lang == "sh") {
        for (line, _) in shell_lines(&block.text) {
            for part in line.split("&&").map(str::trim).filter(|p| !p.is_empty()) {
                let command = words(part.trim_end_matches('&'));
                if command.first().is_some_and(|c| c == "curl") {
                    continue;
                }
                check_command(&block.file, &command, &packages);
                checked += 1;
            }
        }
    }
    assert!(checked >= 15, "only {checked} commands found");
}

/// Runs one documented curl command against `base` (standing for `localhost:PORT`).
fn run_curl(file: &str, line: &str, comment: &str, port: &str, base: &str) {
    let command = line.replace(&format!("localhost:{port}"), base);
    let out = Command::new("sh").args(["-c", &command]).output().unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{file}: `{line}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The status, from the same command once more.
    let status = Command::new("sh")
        .args(["-c", &format!("{command} -o /dev/null -w '%{{http_code}}'")])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout).to_string();
    let expected = if comment.starts_with("# 422") {
        "422"
    } else {
        "200"
    };
    let head: String = body.chars().take(600).collect();
    assert_eq!(status, expected, "{file}: `{line}`: {head}");
    if body.trim().is_empty() {
        return; // `/health`: the status is the answer
    }
    // Prometheus text starts with a series' `# HELP` (or `# TYPE` for one without a help).
    if body.starts_with("# HELP") || body.starts_with("# TYPE") {
        assert!(
            body.contains("\nmigserve_"),
            "{file}: `{line}`: no migserve metrics"
        );
        // Every series is described.
        for typed in body.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
            let name = typed.split(' ').next().unwrap_or_default();
            assert!(
                body.contains(&format!("# HELP {name} ")),
                "{file}: `{line}`: {name} has no # HELP"
            );
        }
        return; // Prometheus text
    }
    let short: String = body.chars().take(600).collect();
    let events: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .collect();
    let values: Vec<serde_json::Value> = if events.is_empty() {
        vec![serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{file}: `{line}`: {e}: {short}"))]
    } else {
        events
            .iter()
            .filter(|d| d.trim() != "[DONE]")
            .map(|d| serde_json::from_str(d.trim()).unwrap())
            .collect()
    };
    let errors: Vec<&serde_json::Value> =
        values.iter().filter(|v| v.get("error").is_some()).collect();
    if let Some(expected) = comment.strip_prefix("# 422") {
        assert_eq!(errors.len(), 1, "{file}: `{line}` should fail: {short}");
        let expected: serde_json::Value = serde_json::from_str(expected.trim()).unwrap();
        assert_eq!(
            errors[0]["error_type"], expected["error_type"],
            "{file}: {short}"
        );
    } else {
        assert!(errors.is_empty(), "{file}: `{line}`: {short}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_examples_answer_on_a_real_server() {
    // `serve` on the embedded default (run from the repository root, as the README says).
    let mut command = Command::new(env!("CARGO_BIN_EXE_migserve"));
    command
        .current_dir(root())
        .args(["serve", "--listen", "127.0.0.1:0"]);
    let (child, front) = spawn_until_line(command, migserve::contract::SERVE_READY_PREFIX, 60);
    // Killed (with its workers) when the test ends, passed or not.
    let _serve = Serve {
        child,
        url: front.clone(),
        config: PathBuf::new(),
    };
    let worker = Worker::start(&["--model-id", "SmolLM2-135M-Instruct"]);
    let c = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        let slices = common::get_json(&c, format!("{front}/slices")).await;
        if slices
            .as_array()
            .is_some_and(|s| s.len() == 3 && s.iter().all(|s| s["state"] == "ready"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "workers not ready: {slices}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let strip = |url: &str| url.trim_start_matches("http://").to_string();
    let (front, worker_addr) = (strip(&front), strip(&worker.url));
    let mut ran = 0;
    for block in blocks().iter().filter(|b| b.lang == "sh") {
        let lines = shell_lines(&block.text);
        for (i, (line, _)) in lines.iter().enumerate() {
            if !line.starts_with("curl ") {
                continue;
            }
            let comment = lines
                .get(i + 1)
                .filter(|(l, _)| l.is_empty())
                .map_or("", |(_, c)| c.as_str());
            let (port, base) = if line.contains("localhost:8081") {
                ("8081", &worker_addr)
            } else {
                ("8080", &front)
            };
            let line = line.clone();
            let (file, comment, base) = (block.file.clone(), comment.to_string(), base.clone());
            tokio::task::spawn_blocking(move || run_curl(&file, &line, &comment, port, &base))
                .await
                .unwrap();
            ran += 1;
        }
    }
    assert!(ran >= 12, "only {ran} curl examples found");
}

#[test]
fn links_point_inside_the_repository() {
    let mut files = vec![root().join("README.md")];
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        files.push(entry.unwrap().path());
    }
    let mut checked = 0;
    for file in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "md"))
    {
        let text = std::fs::read_to_string(file).unwrap();
        let dir = file.parent().unwrap();
        for (i, _) in text.match_indices("](") {
            let rest = &text[i + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = &rest[..end];
            let path = target.split('#').next().unwrap();
            assert!(
                !target.contains("://") && !path.is_empty(),
                "{}: link {target:?} leaves the repository",
                file.display()
            );
            let resolved = dir
                .join(path)
                .canonicalize()
                .unwrap_or_else(|_| panic!("{}: link {target:?} points nowhere", file.display()));
            assert!(
                resolved.starts_with(root().canonicalize().unwrap()),
                "{}: link {target:?} leaves the repository",
                file.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} links found");
}
