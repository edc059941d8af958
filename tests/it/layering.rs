//! The module layering of `docs/architecture.md` holds: every `crate::` path in `src/` (and
//! every `nixprox::` path in `src/main.rs`) names a module its table allows, the table has a
//! row for every module of `src/lib.rs`, and the allowed graph has no cycle. The table is read
//! from the document itself (between `<!-- layering:begin -->` and `<!-- layering:end -->`),
//! so the picture the docs show is the rule the build enforces.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::support::nix::repo;

/// `module` (or `module::file`) → the modules it may name.
type Table = BTreeMap<String, BTreeSet<String>>;

/// The rows of the layering table: `| \`apply\` | \`config\`, \`deploy\` | why |`.
fn table() -> Table {
    let doc = std::fs::read_to_string(repo().join("docs/architecture.md")).expect("docs/architecture.md");
    let start =
        doc.find("<!-- layering:begin -->").expect("docs/architecture.md has `<!-- layering:begin -->`");
    let end = doc.find("<!-- layering:end -->").expect("docs/architecture.md has `<!-- layering:end -->`");
    let mut table = Table::new();
    for line in doc[start..end].lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let name = cells[0].trim_matches('`').to_string();
        let allowed = cells[1]
            .split(',')
            .map(|m| m.trim().trim_matches('`').to_string())
            .filter(|m| m != "—")
            .collect();
        assert!(table.insert(name.clone(), allowed).is_none(), "row `{name}` appears twice");
    }
    assert!(table.len() > 10, "the layering table was not found: {table:?}");
    table
}

/// Every `.rs` file under `src/`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The modules one line names through `prefix` (`crate::` or `nixprox::`), including
/// groups (`crate::{a, b::c}`).
fn named(line: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().last();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or_default();
            out.extend(
                inner.split(',').map(|item| item.trim().split("::").next().unwrap_or_default().to_string()),
            );
        } else {
            out.push(rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect());
        }
    }
    out.retain(|m| !m.is_empty() && m != "self");
    out
}

/// `(line number, module named)` of a file's code: comments are skipped, and so is the
/// `#[cfg(test)] mod tests { … }` that ends a file by convention.
fn references(text: &str, prefix: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut test_attribute = false;
    for (index, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        if test_attribute && code.starts_with("mod ") && code.ends_with('{') {
            break;
        }
        test_attribute = code == "#[cfg(test)]";
        out.extend(named(line, prefix).into_iter().map(|m| (index + 1, m)));
    }
    out
}

/// Files only compiled for tests: `#[cfg(test)] mod name;` in their parent.
fn test_only(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(file).expect("read source");
        let dir = file.parent().expect("parent");
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for pair in lines.windows(2) {
            if let ["#[cfg(test)]", item] = pair
                && let Some(name) = item.trim_start_matches("pub(crate) ").strip_prefix("mod ")
                && let Some(name) = name.strip_suffix(';')
            {
                out.insert(dir.join(format!("{name}.rs")));
            }
        }
    }
    out
}

#[test]
fn every_module_uses_only_what_the_layering_table_allows() {
    let table = table();
    let src = repo().join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let test_files = test_only(&files);
    let mut violations = Vec::new();
    for file in files.iter().filter(|f| !test_files.contains(*f)) {
        let relative = file.strip_prefix(&src).expect("under src").to_string_lossy().replace('\\', "/");
        let without_rs = relative.trim_end_matches(".rs");
        let module = without_rs.split('/').next().unwrap_or_default().to_string();
        let (prefix, own) =
            if relative == "main.rs" { ("nixprox::", "") } else { ("crate::", module.as_str()) };
        if relative == "lib.rs" {
            continue;
        }
        // A row for the file itself (`run::probe`) is stricter than its module's.
        let file_row = without_rs.replace('/', "::").trim_end_matches("::mod").to_string();
        let (row, allowed) = match table.get(&file_row) {
            Some(allowed) => (file_row, allowed),
            None => match table.get(&module) {
                Some(allowed) => (module.clone(), allowed),
                None => panic!(
                    "src/{relative}: module `{module}` has no row in the layering table of docs/architecture.md"
                ),
            },
        };
        let text = std::fs::read_to_string(file).expect("read source");
        for (line, used) in references(&text, prefix) {
            if used != own && !allowed.contains(&used) {
                violations.push(format!(
                    "src/{relative}:{line}: `{row}` uses `{used}`, which its row does not allow (allowed: {})",
                    allowed.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering violations (fix the code, or change the table in docs/architecture.md with a reason):\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_layering_table_names_every_module_and_has_no_cycle() {
    let table = table();
    let lib = std::fs::read_to_string(repo().join("src/lib.rs")).expect("src/lib.rs");
    let modules: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod ").and_then(|m| m.strip_suffix(';')))
        .map(str::to_string)
        .chain(["main".to_string()])
        .collect();
    let rows: BTreeSet<String> = table.keys().filter(|k| !k.contains("::")).cloned().collect();
    assert_eq!(rows, modules, "the layering table's rows are not the modules of src/lib.rs (and `main`)");
    for (row, allowed) in &table {
        for used in allowed {
            assert!(modules.contains(used), "row `{row}` allows `{used}`, which is no module");
        }
    }
    // Depth-first search for a cycle in the module rows.
    fn visit<'a>(table: &'a Table, module: &'a str, path: &mut Vec<&'a str>, done: &mut BTreeSet<&'a str>) {
        if done.contains(module) {
            return;
        }
        if let Some(at) = path.iter().position(|m| *m == module) {
            panic!("the layering table has a cycle: {} → {module}", path[at..].join(" → "));
        }
        path.push(module);
        for next in table.get(module).into_iter().flatten() {
            visit(table, next, path, done);
        }
        path.pop();
        done.insert(module);
    }
    let mut done = BTreeSet::new();
    for module in table.keys().filter(|k| !k.contains("::")) {
        visit(&table, module, &mut Vec::new(), &mut done);
    }
}

#[test]
fn references_are_found_in_paths_and_groups() {
    assert_eq!(named("use crate::proxmox::{Client, LiveVm};", "crate::"), ["proxmox"]);
    assert_eq!(named("use crate::{apply, deploy::Deployed};", "crate::"), ["apply", "deploy"]);
    assert_eq!(named("let x = crate::apply::vm::read_raw(a, b);", "crate::"), ["apply"]);
    assert_eq!(named("pub(crate) fn f() {}", "crate::"), Vec::<String>::new());
    assert_eq!(named("nixprox::run::run(cli)", "nixprox::"), ["run"]);
    let text =
        "use crate::a::X;\n// crate::b in a comment\n#[cfg(test)]\nmod tests {\n    use crate::c;\n}\n";
    assert_eq!(references(text, "crate::"), [(1, "a".to_string())]);
}
