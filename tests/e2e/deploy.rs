//! The deployment files and the operator docs must not drift from the CLI:
//! every `--flag` given to `etcd-manager` or `etcd-manager-ctl` anywhere in
//! `deploy/` (systemd units and environment files, the static pod, terraform
//! templates, the Dockerfile) and in the docs' code blocks exists; every
//! `ETCD_MANAGER_*` variable is one the manager reads; the example
//! configurations pass the manager's own validation; the flags table in
//! docs/operations.md lists exactly the manager's flags; the metric names in
//! the alert rules, dashboard and docs are the ones the manager exports; and
//! the systemd units pass `systemd-analyze verify` where it is installed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;
use etcd_manager::cli::config::{Args, Config};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The manager's long flag names (and aliases), plus clap's built-ins.
fn manager_flags() -> BTreeSet<String> {
    let mut names: BTreeSet<String> = etcd_manager::cli::goflags::long_names(&Args::command())
        .into_iter()
        .collect();
    names.extend(["help".to_string(), "version".to_string()]);
    names
}

/// The manager's `ETCD_MANAGER_*` variables, each with its long flag and
/// whether the flag takes a value.
fn manager_env() -> BTreeMap<String, (String, bool)> {
    Args::command()
        .get_arguments()
        .filter_map(|a| {
            let env = a.get_env()?.to_str()?.to_string();
            let long = a.get_long()?.to_string();
            Some((env, (long, a.get_action().takes_values())))
        })
        .collect()
}

/// The ctl's long flags, read from `--help` of the ctl and of each command.
fn ctl_flags() -> BTreeSet<String> {
    let help = |args: &[&str]| -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_etcd-manager-ctl"))
            .args(args)
            .output()
            .expect("etcd-manager-ctl runs");
        assert!(out.status.success(), "etcd-manager-ctl {args:?} failed");
        String::from_utf8(out.stdout).expect("utf8 help")
    };
    let top = help(&["--help"]);
    let mut names = BTreeSet::from(["help".to_string(), "version".to_string()]);
    let mut commands = Vec::new();
    let mut in_commands = false;
    for line in top.lines() {
        if line.starts_with("Commands:") {
            in_commands = true;
            continue;
        }
        if in_commands {
            match line.split_whitespace().next() {
                Some(c) if line.starts_with("  ") => commands.push(c.to_string()),
                _ => in_commands = false,
            }
        }
    }
    assert!(commands.contains(&"restore-backup".to_string()), "{top}");
    let mut texts = vec![top];
    for c in commands.iter().filter(|c| *c != "help") {
        texts.push(help(&[c, "--help"]));
    }
    for text in texts {
        for line in text.lines() {
            let line = line.trim_start();
            if !line.starts_with('-') {
                continue;
            }
            for tok in line.split([' ', ',']) {
                if let Some(name) = tok.strip_prefix("--") {
                    names.insert(name.to_string());
                }
            }
        }
    }
    assert!(
        names.contains("backup-store") && names.contains("member-count"),
        "{names:?}"
    );
    names
}

/// Every file under `dir`, recursively, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                // terraform's own working files, if someone ran it here.
                if p.file_name().is_some_and(|n| n == ".terraform") {
                    continue;
                }
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Which binary a token invokes, if it is one of ours in command position
/// (`etcd-manager`, `/usr/local/bin/etcd-manager-ctl`,
/// `ExecStart=/usr/local/bin/etcd-manager`, `target/debug/etcd-manager`).
fn invoked_binary(token: &str) -> Option<&'static str> {
    if token.starts_with('-') {
        return None;
    }
    let token = token.rsplit('=').next().unwrap_or(token);
    let (parent, base) = match token.rsplit_once('/') {
        Some((p, b)) => (Some(p.rsplit('/').next().unwrap_or(p)), b),
        None => (None, token),
    };
    if !matches!(parent, None | Some("bin" | "debug" | "release")) {
        return None;
    }
    match base {
        "etcd-manager" => Some("etcd-manager"),
        "etcd-manager-ctl" => Some("etcd-manager-ctl"),
        _ => None,
    }
}

/// Flags given to our binaries on one logical line: (binary, flag name).
fn flags_on_line(line: &str) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let mut current = None;
    for raw in line.split_whitespace() {
        let tok = raw.trim_matches(|c| matches!(c, '"' | '\'' | '`' | ',' | '[' | ']' | '(' | ')'));
        if raw.contains(['|', ';', '&']) || raw.starts_with(['>', '<']) {
            current = None;
            continue;
        }
        if let Some(bin) = invoked_binary(tok) {
            current = Some(bin);
            continue;
        }
        let Some(bin) = current else { continue };
        let Some(body) = tok.strip_prefix('-') else {
            continue;
        };
        let name = body.trim_start_matches('-');
        let name = name.split('=').next().unwrap_or(name);
        // Short flags (-o json) and stray dashes are not long flags.
        if name.len() > 1 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            out.push((bin, name.to_string()));
        }
    }
    out
}

/// Logical lines of a file: shell/systemd continuations joined, and for
/// Markdown only the fenced code blocks.
fn logical_lines(path: &Path, text: &str) -> Vec<String> {
    let markdown = path.extension().is_some_and(|e| e == "md");
    let mut out = Vec::new();
    let mut pending = String::new();
    let mut in_fence = false;
    for line in text.lines() {
        if markdown {
            if line.trim_start().starts_with("```") {
                in_fence = !in_fence;
                continue;
            }
            if !in_fence {
                continue;
            }
        }
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        out.push(std::mem::take(&mut pending));
    }
    if !pending.is_empty() {
        out.push(pending);
    }
    out
}

/// `NAME=value` pairs of an environment file (comments and blanks skipped).
fn env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not NAME=value: {l}"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn files_to_check() -> Vec<PathBuf> {
    let root = repo();
    let mut all = files(&root.join("deploy"));
    all.extend(files(&root.join("docs")));
    all.retain(|p| {
        // install-etcd.sh has flags of its own and runs no binary of ours.
        p.file_name().is_some_and(|n| n != "install-etcd.sh") && std::fs::read_to_string(p).is_ok()
    });
    all
}

#[test]
fn every_flag_and_variable_in_deploy_and_docs_exists() {
    let manager = manager_flags();
    let ctl = ctl_flags();
    let env = manager_env();
    let mut unknown = Vec::new();
    let mut seen = 0;
    for path in files_to_check() {
        let text = std::fs::read_to_string(&path).expect("readable");
        let rel = path
            .strip_prefix(repo())
            .unwrap_or(&path)
            .display()
            .to_string();
        let is_pod = path.extension().is_some_and(|e| e == "yaml" || e == "yml")
            && rel.starts_with("deploy/kubernetes");
        for line in logical_lines(&path, &text) {
            let mut found = flags_on_line(&line);
            // The static pod's command list has one flag per line.
            if is_pod
                && let Some(item) = line.trim_start().strip_prefix("- ")
                && let Some(flag) = item.trim_matches('"').strip_prefix("--")
            {
                found.push((
                    "etcd-manager",
                    flag.split('=').next().unwrap_or(flag).to_string(),
                ));
            }
            for (bin, flag) in found {
                seen += 1;
                let known = if bin == "etcd-manager" {
                    &manager
                } else {
                    &ctl
                };
                if !known.contains(&flag) {
                    unknown.push(format!(
                        "{rel}: {bin} has no --{flag} (in: {})",
                        line.trim()
                    ));
                }
            }
            for (i, _) in line.match_indices("ETCD_MANAGER_") {
                let name: String = line[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                if name == "ETCD_MANAGER_" {
                    continue; // prose: "every ETCD_MANAGER_* variable"
                }
                seen += 1;
                if !env.contains_key(&name) {
                    unknown.push(format!("{rel}: etcd-manager reads no variable {name}"));
                }
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "flags or variables that do not exist:\n{}",
        unknown.join("\n")
    );
    assert!(
        seen > 50,
        "only {seen} flags and variables found: is the scanner blind?"
    );
}

#[test]
fn the_scanner_finds_flags_where_operators_write_them() {
    let found = |l: &str| flags_on_line(l);
    assert_eq!(
        found("ExecStart=/usr/local/bin/etcd-manager --seeds=a:1 --insecure"),
        [
            ("etcd-manager", "seeds".into()),
            ("etcd-manager", "insecure".into())
        ]
    );
    assert_eq!(
        found("etcd-manager-ctl -backup-store=s3://b/p -member-count=3 configure-cluster"),
        [
            ("etcd-manager-ctl", "backup-store".into()),
            ("etcd-manager-ctl", "member-count".into())
        ]
    );
    assert_eq!(
        found("id etcd-manager >/dev/null 2>&1 || useradd --system x"),
        []
    );
    assert_eq!(
        found("useradd --home-dir /var/lib/etcd-manager --shell /bin/false"),
        []
    );
    assert_eq!(found("etcd-manager-ctl -o json status"), []);
}

/// Turn `ETCD_MANAGER_*` pairs into the manager's command line.
fn args_from_env(pairs: &[(String, String)], source: &str) -> Vec<String> {
    let env = manager_env();
    let mut argv = vec!["etcd-manager".to_string()];
    for (k, v) in pairs {
        if !k.starts_with("ETCD_MANAGER_") {
            continue;
        }
        let (long, takes_value) = env
            .get(k)
            .unwrap_or_else(|| panic!("{source}: etcd-manager reads no variable {k}"));
        if *takes_value {
            argv.push(format!("--{long}={v}"));
        } else if matches!(v.as_str(), "true" | "1" | "yes" | "on") {
            argv.push(format!("--{long}"));
        }
    }
    argv
}

fn validate(argv: &[String], source: &str) -> Config {
    let args = <Args as clap::Parser>::try_parse_from(argv)
        .unwrap_or_else(|e| panic!("{source}: the flags do not parse: {e}\n{argv:?}"));
    Config::try_from(args).unwrap_or_else(|e| panic!("{source}: invalid configuration: {e}"))
}

#[test]
fn example_configurations_pass_the_managers_validation() {
    let root = repo();
    let text = std::fs::read_to_string(root.join("deploy/systemd/etcd-manager.env.example"))
        .expect("env example");
    let pairs = env_file(&text);
    let cfg = validate(
        &args_from_env(&pairs, "etcd-manager.env.example"),
        "etcd-manager.env.example",
    );
    assert_eq!(cfg.seeds.len(), 3, "a static seed list of three masters");
    assert_eq!(
        cfg.discovery_dir, None,
        "seeds replace the discovery folder"
    );
    assert!(cfg.metrics_address.is_some());
    assert!(cfg.data_dir.starts_with("/var/lib/etcd-manager"));

    // The commented events example in the same file ("#   NAME=value"
    // lines) overrides the main values into a valid second cluster.
    let events: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("#   "))
        .filter_map(|l| l.split_once('='))
        .collect();
    assert!(events.len() >= 8, "events example: {events:?}");
    let mut merged: BTreeMap<String, String> = pairs.iter().cloned().collect();
    for (k, v) in events {
        merged.insert(k.to_string(), v.to_string());
    }
    let merged: Vec<(String, String)> = merged.into_iter().collect();
    let ev = validate(&args_from_env(&merged, "events example"), "events example");
    assert_eq!(ev.cluster_name, "events");
    assert_ne!(ev.gossip_addr.port(), cfg.gossip_addr.port());
    assert_ne!(ev.node.client_urls, cfg.node.client_urls);
    assert_ne!(ev.metrics_address, cfg.metrics_address);

    // The static pod's command, with the host address filled in.
    let pod = std::fs::read_to_string(root.join("deploy/kubernetes/etcd-manager-main.yaml"))
        .expect("static pod");
    let mut argv = vec!["etcd-manager".to_string()];
    let mut in_command = false;
    for line in pod.lines() {
        let t = line.trim();
        if t == "command:" {
            in_command = true;
            continue;
        }
        if in_command {
            if t.starts_with('#') {
                continue;
            }
            match t.strip_prefix("- ") {
                Some(item) if item.starts_with("--") => {
                    argv.push(item.trim_matches('"').replace("$(HOST_IP)", "10.0.1.10"))
                }
                Some(_) => {}
                None => in_command = false,
            }
        }
    }
    assert!(argv.len() > 10, "{argv:?}");
    let pod_cfg = validate(&argv, "etcd-manager-main.yaml");
    assert_eq!(pod_cfg.seeds.len(), 3);
    assert_eq!(pod_cfg.node.client_urls, ["https://10.0.1.10:4001"]);
    assert!(
        !pod_cfg.insecure && !pod_cfg.etcd_insecure,
        "the static pod must not turn TLS off"
    );
}

/// A table row's first two cells, for rows whose first cell is a `--flag`.
fn flag_rows(doc: &str) -> BTreeMap<String, String> {
    doc.lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let flag = cells.get(1)?.trim_matches('`').strip_prefix("--")?;
            if !flag.starts_with(|c: char| c.is_ascii_lowercase()) {
                return None; // the |---| line under the header
            }
            let env = cells.get(2)?.trim_matches('`').to_string();
            Some((flag.to_string(), env))
        })
        .collect()
}

#[test]
fn the_flags_table_in_the_docs_lists_every_flag_with_its_variable() {
    let doc = std::fs::read_to_string(repo().join("docs/operations.md")).expect("operations.md");
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("Flags"))
        .expect("docs/operations.md has a '## Flags' section");
    let rows = flag_rows(section);
    let want: BTreeMap<String, String> = manager_env()
        .into_iter()
        .map(|(env, (long, _))| (long, env))
        .collect();
    let missing: Vec<_> = want.keys().filter(|k| !rows.contains_key(*k)).collect();
    let extra: Vec<_> = rows.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "flags missing from the table: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "flags in the table that do not exist: {extra:?}"
    );
    for (flag, env) in &want {
        assert_eq!(
            &rows[flag], env,
            "--{flag}: the table names the wrong variable"
        );
    }
}

#[test]
fn metric_names_in_rules_dashboard_and_docs_are_exported() {
    use etcd_manager::metrics as m;
    let exported: BTreeSet<&str> = m::ALL.iter().copied().collect();
    let mut used = BTreeSet::new();
    let mut unknown = Vec::new();
    let shown = files_to_check().into_iter().filter(|p| {
        p.starts_with(repo().join("docs")) || p.starts_with(repo().join("deploy/prometheus"))
    });
    for path in shown {
        let text = std::fs::read_to_string(&path).expect("readable");
        for (i, _) in text.match_indices("etcd_manager_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if exported.contains(name.as_str()) {
                used.insert(name);
            } else {
                unknown.push(format!("{}: {name}", path.display()));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics the manager does not export:\n{}",
        unknown.join("\n")
    );
    let rules = std::fs::read_to_string(repo().join("deploy/prometheus/etcd-manager.rules.yml"))
        .expect("rules");
    for name in [
        m::IS_LEADER,
        m::BACKUP_LAST_SUCCESS,
        m::BACKUP_INTERVAL,
        m::BACKUPS,
    ] {
        assert!(rules.contains(name), "the alert rules do not use {name}");
    }
    assert!(used.len() >= 13, "only {used:?} are shown anywhere");
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let Some(analyze) = tests::which("systemd-analyze") else {
        tests::tool_missing("systemd-analyze not found (apt-get install systemd)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_etcd-manager");
    for (src, name) in [
        ("etcd-manager.service", "etcd-manager.service"),
        ("etcd-manager@.service", "etcd-manager@main.service"),
    ] {
        let text = std::fs::read_to_string(repo().join("deploy/systemd").join(src)).unwrap();
        assert!(
            text.contains("ExecStart=/usr/local/bin/etcd-manager\n"),
            "{src}"
        );
        assert!(
            text.contains("Restart=always") && text.contains("KillMode=mixed"),
            "{src}"
        );
        // verify checks that ExecStart is executable: point it at the build.
        let text = text.replace("/usr/local/bin/etcd-manager", bin);
        let unit = dir.path().join(name);
        std::fs::write(&unit, text).unwrap();
        let out = Command::new(&analyze)
            .arg("verify")
            .arg(&unit)
            .output()
            .expect("systemd-analyze runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "systemd-analyze verify {src}:\n{stderr}"
        );
        assert!(
            !stderr.contains(name),
            "systemd-analyze verify {src} warns:\n{stderr}"
        );
    }
}
