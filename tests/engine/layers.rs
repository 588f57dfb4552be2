//! The dependency rule of docs/architecture.md, checked on the source: a module imports
//! only modules of a lower layer. Nothing imports `startup` but `cli`; no surface imports
//! another; the store imports nothing but `domain`.

use std::{collections::BTreeSet, path::Path};

/// Layers, lowest first. A module may use modules of lower layers only.
const LAYERS: &[&[&str]] = &[
    &["domain", "telemetry", "config", "auth"],
    &["store"],
    &["identity", "pricing", "dispatch"],
    &["jobs", "gateway", "sim", "cluster"],
    &["api", "ops"],
    &["startup"],
    &["cli"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The crate modules a source text refers to: `crate::x` paths and the first segment of
/// every item of a `use crate::{...}` group.
fn referenced(text: &str) -> BTreeSet<String> {
    let text: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let (mut depth, mut item, mut end) = (1, String::new(), group.len());
            for (i, ch) in group.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 || (depth == 1 && ch == ',') {
                    if let Some(first) = first_ident(&item) {
                        out.insert(first);
                    }
                    item.clear();
                    if depth == 0 {
                        end = i;
                        break;
                    }
                } else {
                    item.push(ch);
                }
            }
            rest = &group[end..];
        } else if let Some(first) = first_ident(rest) {
            out.insert(first);
        }
    }
    out
}

fn first_ident(text: &str) -> Option<String> {
    let ident: String = text
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!ident.is_empty()).then_some(ident)
}

fn sources(path: &Path, out: &mut Vec<std::path::PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            sources(&entry.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

#[test]
fn no_module_imports_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for layer in LAYERS {
        for module in *layer {
            let dir = src.join(module);
            let file = src.join(format!("{module}.rs"));
            let mut files = Vec::new();
            sources(if dir.is_dir() { &dir } else { &file }, &mut files);
            assert!(!files.is_empty(), "module {module} has no source");
            let mine = layer_of(module).unwrap();
            for f in files {
                for used in referenced(&std::fs::read_to_string(&f).unwrap()) {
                    seen.insert(used.clone());
                    if used == *module {
                        continue;
                    }
                    match layer_of(&used) {
                        Some(theirs) if theirs < mine => {}
                        Some(_) => problems.push(format!(
                            "{} uses crate::{used}, which is not below {module}",
                            f.strip_prefix(&src).unwrap().display()
                        )),
                        None => problems.push(format!(
                            "{} uses crate::{used}, a module missing from the layer table",
                            f.display()
                        )),
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    // The check reads something: the layers it knows are in use.
    assert!(
        seen.contains("store") && seen.contains("dispatch"),
        "{seen:?}"
    );
}

#[test]
fn the_reference_reader_sees_grouped_and_plain_paths() {
    let text = "use crate::{\n    api::ApiContext,\n    store::{events::{self}, Store},\n};\nfn f() { crate::ops::x(); } // crate::startup";
    let found: Vec<String> = referenced(text).into_iter().collect();
    assert_eq!(found, ["api", "ops", "store"]);
}
