//! The back office's modules form layers: no module imports (by `use` or by a path in its
//! code) a module that imports it back, directly or round a longer circle. Read from the
//! source files themselves; the crate root, which only declares modules and re-exports for
//! the binary, is not a layer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`api::auth`) of every source file.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut segs: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if segs
                .last()
                .is_some_and(|s| s == "mod" || s == "lib" || s == "main")
            {
                segs.pop();
            }
            if rel == Path::new("main") {
                continue;
            }
            out.insert(segs.join("::"), std::fs::read_to_string(&path).unwrap());
        }
    }
    out
}

/// The code without comments and without its unit tests (they sit at the end).
fn code_of(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or("").trim();
        return vec![path.to_owned()];
    };
    let prefix = tree[..open].trim().trim_end_matches("::");
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, ch) in inner.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[start..]);
    items
        .into_iter()
        .filter(|i| !i.trim().is_empty())
        .flat_map(expand)
        .map(|p| match p.as_str() {
            "self" => prefix.to_owned(),
            _ => format!("{prefix}::{p}"),
        })
        .collect()
}

/// Every `crate::…`, `super::…` or `self::…` path the code names.
fn paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    // `use` trees: statements that begin a line.
    let lines: Vec<&str> = code.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let Some(tree) = ["use ", "pub use ", "pub(crate) use ", "pub(super) use "]
            .iter()
            .find_map(|p| t.strip_prefix(p))
        else {
            continue;
        };
        let mut stmt = tree.to_owned();
        for more in &lines[i + 1..] {
            if stmt.contains(';') {
                break;
            }
            stmt.push(' ');
            stmt.push_str(more);
        }
        if let Some(end) = stmt.find(';') {
            out.extend(expand(&stmt[..end]));
        }
    }
    // Paths in the code.
    for root in ["crate::", "super::", "self::"] {
        let mut rest = code;
        while let Some(i) = rest.find(root) {
            let before = rest[..i].chars().last();
            let tail = &rest[i..];
            let len = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            if before.is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '$')) {
                out.push(tail[..len].trim_end_matches(':').to_owned());
            }
            rest = &rest[i + root.len()..];
        }
    }
    out
}

/// The module a path names: the longest known module it starts with.
fn resolve(from: &str, path: &str, known: &BTreeMap<String, String>) -> Option<String> {
    let mut segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut base: Vec<&str> = if from.is_empty() {
        Vec::new()
    } else {
        from.split("::").collect()
    };
    match segs.first().copied() {
        Some("crate") => {
            base.clear();
            segs.remove(0);
        }
        Some("super") | Some("self") => {
            while let Some(s) = segs.first().copied() {
                match s {
                    "super" => {
                        base.pop();
                    }
                    "self" => {}
                    _ => break,
                }
                segs.remove(0);
            }
        }
        // An outside crate, or a name of this module.
        _ => return None,
    }
    let full: Vec<&str> = base.into_iter().chain(segs).collect();
    (0..=full.len())
        .rev()
        .map(|n| full[..n].join("::"))
        .find(|m| known.contains_key(m))
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let known = modules(&src);
    assert!(known.len() > 30, "{} modules", known.len());
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in &known {
        if module.is_empty() {
            continue;
        }
        for p in paths(&code_of(text)) {
            if let Some(target) = resolve(module, &p, &known)
                && !target.is_empty()
                && &target != module
            {
                edges.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    // Sanity: the reader sees what is there.
    assert!(
        edges["api::auth"].contains("state"),
        "{:?}",
        edges["api::auth"]
    );
    assert!(edges["portal::pages::signin"].contains("portal::pages"));

    // Any circle, found by a depth-first walk.
    fn walk(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        circles: &mut Vec<Vec<String>>,
    ) {
        if let Some(i) = path.iter().position(|p| p == m) {
            circles.push(path[i..].iter().cloned().chain([m.to_owned()]).collect());
            return;
        }
        if done.contains(m) {
            return;
        }
        path.push(m.to_owned());
        for next in edges.get(m).into_iter().flatten() {
            walk(next, edges, path, done, circles);
        }
        path.pop();
        done.insert(m.to_owned());
    }
    let mut circles = Vec::new();
    let mut done = BTreeSet::new();
    for m in edges.keys() {
        walk(m, &edges, &mut Vec::new(), &mut done, &mut circles);
    }
    let shown: Vec<String> = circles.iter().map(|c| c.join(" -> ")).collect();
    assert!(
        shown.is_empty(),
        "modules in a circle:\n{}",
        shown.join("\n")
    );
}

#[test]
fn the_reader_expands_use_trees() {
    assert_eq!(
        expand("crate::store::{auth::{self, Principal}, catalog}"),
        vec![
            "crate::store::auth",
            "crate::store::auth::Principal",
            "crate::store::catalog"
        ]
    );
    let known: BTreeMap<String, String> = ["", "a", "a::b", "c"]
        .into_iter()
        .map(|m| (m.to_owned(), String::new()))
        .collect();
    assert_eq!(resolve("a::b", "super::X", &known).as_deref(), Some("a"));
    assert_eq!(resolve("a", "crate::c::f", &known).as_deref(), Some("c"));
    assert_eq!(resolve("a", "self::b::Y", &known).as_deref(), Some("a::b"));
    assert_eq!(resolve("a", "std::fmt", &known), None);
}
