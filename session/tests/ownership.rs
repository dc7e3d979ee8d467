//! Every table has one writing crate, as ARCHITECTURE.md's "Who writes each table" lists them
//! with the files that write it: this test reads that list, checks it names exactly the tables
//! of the migrations, and fails when SQL that writes a table (`INSERT INTO`, `UPDATE`, `DELETE
//! FROM`) appears in another crate, or in a file of its crate the list does not name.
//! Whole-platform tests are not scanned (they may seed what they check).
//!
//! It also fails when service code compares a status or kind with a string literal.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The source folders scanned, with the crate each belongs to.
const CRATES: [(&str, &str); 8] = [
    ("protocol/src", "protocol"),
    ("db/src", "db"),
    ("session/src", "session"),
    ("broker/src", "broker"),
    ("gateway/src", "gateway"),
    ("billing/src", "billing"),
    ("sensors-sim/src", "sensors-sim"),
    ("src", "parkflow"),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// Who may write a table: its crate, and the files (or folders) of that crate that do.
#[derive(Debug)]
struct Owner {
    krate: String,
    /// Paths from the workspace root: `gateway/src/store/writer.rs`, `billing/src/charging/`.
    files: Vec<String>,
}

/// Table → owner, from ARCHITECTURE.md's table (rows like "| `sessions` | session | `repo.rs` |",
/// the files relative to the crate's source folder).
fn owners() -> BTreeMap<String, Owner> {
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let section = text
        .split("## Who writes each table")
        .nth(1)
        .expect("ARCHITECTURE.md has a section \"Who writes each table\"");
    section
        .lines()
        .take_while(|line| !line.starts_with("## "))
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let table = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            let krate = (*cells.get(2)?).to_owned();
            let folder = CRATES.iter().find(|(_, k)| *k == krate)?.0;
            let files = cells
                .get(3)?
                .split('`')
                .skip(1)
                .step_by(2)
                .filter(|path| path.ends_with(".rs") || path.ends_with('/'))
                .map(|path| format!("{folder}/{path}"))
                .collect();
            Some((table.to_owned(), Owner { krate, files }))
        })
        .collect()
}

fn migration_tables() -> BTreeSet<String> {
    let mut tables = BTreeSet::new();
    for entry in std::fs::read_dir(root().join("migrations/sqlite")).expect("migrations") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("migration");
        let words: Vec<&str> = text.split_whitespace().collect();
        for pair in words.windows(3) {
            if pair[0].eq_ignore_ascii_case("CREATE") && pair[1].eq_ignore_ascii_case("TABLE") {
                tables.insert(pair[2].trim_end_matches('(').to_owned());
            }
        }
    }
    tables
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("source folder") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `(table, file)` for every statement in the sources that writes a table.
fn writes() -> Vec<(String, String, &'static str)> {
    let root = root();
    let mut found = Vec::new();
    for (folder, krate) in CRATES {
        let mut files = Vec::new();
        rust_files(&root.join(folder), &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).expect("source");
            let words: Vec<&str> = text
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| !w.is_empty())
                .collect();
            for (i, word) in words.iter().enumerate() {
                let table = match (*word, words.get(i + 1)) {
                    ("INSERT", Some(&"INTO")) | ("DELETE", Some(&"FROM")) => words.get(i + 2),
                    ("UPDATE", _) => words.get(i + 1),
                    _ => None,
                };
                if let Some(table) = table {
                    let relative = file.strip_prefix(&root).expect("inside the root");
                    found.push((
                        (*table).to_owned(),
                        relative.to_string_lossy().into_owned(),
                        krate,
                    ));
                }
            }
        }
    }
    found
}

#[test]
fn the_ownership_table_names_every_table_of_the_schema() {
    let owners = owners();
    let listed: BTreeSet<String> = owners.keys().cloned().collect();
    assert_eq!(listed, migration_tables());
    for (table, owner) in &owners {
        assert!(
            !owner.files.is_empty(),
            "{table}: no file named as its writer"
        );
        for file in &owner.files {
            assert!(root().join(file).exists(), "{table}: {file} does not exist");
        }
    }
}

#[test]
fn every_table_is_written_only_by_its_owner() {
    let owners = owners();
    let mut strays = BTreeSet::new();
    for (table, file, krate) in writes() {
        let Some(owner) = owners.get(&table) else {
            // Not a table of the schema (a benchmark's scratch table, a word in a comment).
            continue;
        };
        if owner.krate != krate || !owner.files.iter().any(|f| file.starts_with(f.as_str())) {
            strays.insert((table, file));
        }
    }
    assert!(
        strays.is_empty(),
        "tables written outside their owner (ARCHITECTURE.md, \"Who writes each table\"): {strays:?}"
    );
}

/// Whether `line` compares a status or kind with a string literal (`status == "open"`,
/// `"review" != kind`, `match status.as_str() {`): statuses are enums, text only at the row edge.
fn compares_status_with_literal(line: &str) -> bool {
    let lower = line.to_ascii_lowercase();
    if !(lower.contains("status") || lower.contains("kind")) {
        return false;
    }
    let literal_comparison = ["== \"", "!= \"", "\" ==", "\" !="]
        .iter()
        .any(|pattern| line.contains(pattern));
    let matched_on_text = lower.contains("match ") && lower.contains(".as_str()");
    literal_comparison || matched_on_text
}

#[test]
fn no_status_is_compared_as_a_string_literal() {
    assert!(compares_status_with_literal(r#"if status != "open" {"#));
    assert!(compares_status_with_literal(
        r#"match payment.status.as_str() {"#
    ));
    assert!(!compares_status_with_literal(
        r#"if status != SessionStatus::Open {"#
    ));
    let root = root();
    let mut found = Vec::new();
    for (folder, _) in CRATES {
        let mut files = Vec::new();
        rust_files(&root.join(folder), &mut files);
        for file in files {
            if file.file_name().is_some_and(|name| name == "tests.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&file).expect("source");
            // Unit tests sit at the end of a file, after `#[cfg(test)]`: they may check text.
            let service = text.split("#[cfg(test)]").next().unwrap_or_default();
            for (number, line) in service.lines().enumerate() {
                if compares_status_with_literal(line) {
                    let relative = file.strip_prefix(&root).expect("inside the root");
                    found.push(format!(
                        "{}:{}: {}",
                        relative.display(),
                        number + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "statuses compared as text:\n{}",
        found.join("\n")
    );
}
