//! No import circle between the workspace's source files: a file that
//! takes names from another (`use crate::a::b`, `super::x`, a path in the
//! code) is an arrow to it; a circle of arrows is a design that no longer
//! shows (ARCHITECTURE.md: "no import circle"). A module's arrows to its own
//! submodules (`mod x;`, `pub use self::x::…`) are structure, not imports,
//! and are not counted; a submodule's arrows to its parent are.
//!
//! Cargo keeps the crates acyclic; this checks the files inside each crate
//! (each binary under `src/bin/` is a crate of its own). Test code (files
//! named `tests.rs` or `*_tests.rs`, and everything after a
//! `#[cfg(test)]` module line) is left out. std only: it reads text, so it
//! runs in the CI's test pool without installing anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One crate's files by module path (`["driver", "observe"]` for
/// `src/driver/observe.rs`; the root is `[]`).
fn modules(root_file: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let dir = root_file.parent().expect("a crate root has a folder");
    let mut out = BTreeMap::new();
    out.insert(vec![], root_file.to_path_buf());
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(dir).expect("under the crate").to_path_buf();
            if p.is_dir() {
                // Binaries are crates of their own.
                if rel != Path::new("bin") {
                    stack.push(p);
                }
                continue;
            }
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if !name.ends_with(".rs")
                || p == root_file
                || name == "tests.rs"
                || name.ends_with("_tests.rs")
                || (name == "main.rs" && d == dir)
            {
                continue;
            }
            let mut path: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            let last = path.pop().unwrap_or_default();
            if last != "mod.rs" {
                path.push(last.trim_end_matches(".rs").to_string());
            }
            out.insert(path, p);
        }
    }
    out
}

/// The file's code without comments, strings and test modules.
fn code_of(text: &str) -> String {
    let mut lines = Vec::new();
    let all: Vec<&str> = text.lines().collect();
    for (i, line) in all.iter().enumerate() {
        let next = all.get(i + 1).map(|l| l.trim_start()).unwrap_or_default();
        if line.trim_start().starts_with("#[cfg(test)]")
            && (next.starts_with("mod ") || next.starts_with("pub mod "))
        {
            break;
        }
        lines.push(*line);
    }
    let joined = lines.join("\n");
    let mut out = String::with_capacity(joined.len());
    let mut chars = joined.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            // A char literal ('x', '\n', '"'), not a lifetime.
            '\'' => {
                let ahead: Vec<char> = chars.clone().take(3).collect();
                let skip = match ahead.as_slice() {
                    ['\\', _, '\''] => 3,
                    [_, '\'', ..] => 2,
                    _ => 0,
                };
                for _ in 0..skip {
                    chars.next();
                }
                out.push_str(if skip > 0 { "' '" } else { "'" });
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        break;
                    }
                }
                out.push_str("\"\"");
            }
            _ => out.push(c),
        }
    }
    out
}

/// Expand a `use` tree's text (`a::{b, c::{d, e}}`) into its paths.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        return vec![tree.split(" as ").next().unwrap_or(tree).trim().to_string()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(|p| expand(p).into_iter().map(move |x| format!("{prefix}{x}")))
        .collect()
}

/// Every path the code names from `crate::`, `super::` or `self::`, as
/// segments relative to the crate root.
fn references(code: &str, me: &[String]) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    // `use` statements, trees expanded.
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().last();
        rest = &rest[at + 4..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let end = rest.find(';').unwrap_or(rest.len());
        paths.extend(expand(&rest[..end]));
        rest = &rest[end..];
    }
    // Paths in the code.
    for start in ["crate::", "super::", "self::"] {
        let mut rest = code;
        while let Some(at) = rest.find(start) {
            let before = rest[..at].chars().last();
            let tail = &rest[at..];
            let len = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            if !before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                paths.push(tail[..len].to_string());
            }
            rest = &tail[len.max(1)..];
        }
    }
    // The module `super::` and `self::` start from: a `mod.rs` is its folder.
    let here: Vec<String> = me.to_vec();
    paths
        .into_iter()
        .filter_map(|p| {
            let segs: Vec<&str> = p.split("::").filter(|s| !s.is_empty()).collect();
            let (mut base, rest) = match segs.first().copied() {
                Some("crate") => (vec![], &segs[1..]),
                Some("self") => (here.clone(), &segs[1..]),
                Some("super") => {
                    let mut b = here.clone();
                    let mut i = 0;
                    while segs.get(i) == Some(&"super") {
                        b.pop();
                        i += 1;
                    }
                    (b, &segs[i..])
                }
                _ => return None,
            };
            base.extend(rest.iter().map(|s| s.to_string()));
            Some(base)
        })
        .collect()
}

/// The arrows between one crate's files (by module path).
fn arrows(mods: &BTreeMap<Vec<String>, PathBuf>) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut out: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (me, file) in mods {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let code = code_of(&text);
        let targets = out.entry(me.clone()).or_default();
        for r in references(&code, me) {
            // The longest module prefix of the path is the file it names.
            let Some(target) = (0..=r.len())
                .rev()
                .map(|n| r[..n].to_vec())
                .find(|p| mods.contains_key(p))
            else {
                continue;
            };
            // Itself, or one of its own submodules: structure, not an import.
            if target.starts_with(me) {
                continue;
            }
            targets.insert(target);
        }
    }
    out
}

/// The circles (strongly connected sets of more than one file), Tarjan.
fn circles(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<Vec<String>>> {
    struct State<'a> {
        graph: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on: BTreeSet<&'a Vec<String>>,
        out: Vec<Vec<Vec<String>>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Vec<String>) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on.insert(v);
        let graph = s.graph;
        for w in graph.get(v).into_iter().flatten() {
            let Some((w, _)) = graph.get_key_value(w) else {
                continue;
            };
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut set = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                set.push(w.clone());
                if w == v {
                    break;
                }
            }
            if set.len() > 1 {
                set.sort();
                s.out.push(set);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: vec![],
        on: BTreeSet::new(),
        out: vec![],
    };
    for v in graph.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

/// Every crate root of the workspace: each package's `src/lib.rs`, and each
/// binary's `main.rs` under `src/bin/`.
fn crate_roots(workspace: &Path) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    for pkg in ["", "backup", "core", "etcd", "gossip", "lock", "tests"] {
        let src = workspace.join(pkg).join("src");
        if src.join("lib.rs").is_file() {
            roots.push(src.join("lib.rs"));
        }
        if let Ok(bins) = std::fs::read_dir(src.join("bin")) {
            for b in bins.flatten() {
                let main = b.path().join("main.rs");
                if main.is_file() {
                    roots.push(main);
                }
            }
        }
    }
    roots
}

fn show(set: &[Vec<String>]) -> String {
    set.iter()
        .map(|m| {
            if m.is_empty() {
                "<root>".to_string()
            } else {
                m.join("::")
            }
        })
        .collect::<Vec<_>>()
        .join(" <-> ")
}

#[test]
fn no_import_circle_between_the_files_of_any_crate() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package is in the workspace");
    let roots = crate_roots(workspace);
    assert!(
        roots.len() >= 8,
        "found only {} crate roots: {roots:?}",
        roots.len()
    );
    let mut found = Vec::new();
    let mut files = 0;
    let mut arrows_seen = 0;
    for root in &roots {
        let mods = modules(root);
        files += mods.len();
        let graph = arrows(&mods);
        arrows_seen += graph.values().map(BTreeSet::len).sum::<usize>();
        for set in circles(&graph) {
            found.push(format!("{}: {}", root.display(), show(&set)));
        }
    }
    // The check reads something: the root crate alone has dozens of files
    // and arrows between them.
    assert!(
        files > 80 && arrows_seen > 100,
        "read {files} files, {arrows_seen} arrows"
    );
    assert!(
        found.is_empty(),
        "import circles (move what both sides need to a place neither imports back from):\n{}",
        found.join("\n")
    );
}

/// The check finds a circle when there is one: two sibling files that take
/// names from each other, through `use super::…` and a path in the code;
/// and a parent's re-export of its child is no circle.
#[test]
fn a_circle_between_two_files_is_found_and_a_parents_reexport_is_not() {
    let dir = std::env::temp_dir().join(format!("import-circles-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("driver")).expect("mkdir");
    let write = |p: &str, t: &str| std::fs::write(dir.join(p), t).expect("write");
    write("lib.rs", "pub mod driver;\npub mod metrics;\n");
    write(
        "driver/mod.rs",
        "mod control;\nmod observe;\npub use self::control::follow; // a re-export\nuse crate::metrics as m;\n",
    );
    write(
        "driver/control.rs",
        "use super::observe::{healthy, Other};\npub fn follow() {}\n",
    );
    write(
        "driver/observe.rs",
        "use super::Driver;\npub fn healthy() { let _ = crate::driver::control::follow(); }\n\"crate::metrics::X\";\n",
    );
    write("metrics.rs", "pub const X: u8 = 0;\n");
    let graph = arrows(&modules(&dir.join("lib.rs")));
    let found = circles(&graph);
    let d = |s: &str| s.split("::").map(str::to_string).collect::<Vec<_>>();
    assert_eq!(
        found,
        vec![vec![d("driver::control"), d("driver::observe")]]
    );
    assert!(
        !graph[&d("driver::observe")].contains(&d("metrics")),
        "a path inside a string is no arrow: {graph:?}"
    );
    assert!(graph[&d("driver")].contains(&d("metrics")));
    // Cut one arrow: no circle.
    write("driver/control.rs", "pub fn follow() {}\n");
    assert!(circles(&arrows(&modules(&dir.join("lib.rs")))).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
