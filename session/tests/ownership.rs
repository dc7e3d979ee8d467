//! Every table has one writing crate, as ARCHITECTURE.md's "Who writes each table" lists them:
//! this test reads that list, checks it names exactly the tables of the migrations, and fails
//! when SQL that writes a table (`INSERT INTO`, `UPDATE`, `DELETE FROM`) appears in another
//! crate's sources. Whole-platform tests are not scanned (they may seed what they check).

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

/// Writes not yet moved to their owner, each with the file that still makes it. The test fails
/// when one of them is gone too, so that this list only ever shrinks.
const NOT_YET_MOVED: [(&str, &str); 1] = [
    // Arrears suspend and reinstate drivers.
    ("drivers", "billing/src/arrears.rs"),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// Table → owning crate, from ARCHITECTURE.md's table (rows like "| `sessions` | session | … |").
fn owners() -> BTreeMap<String, String> {
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
            Some((table.to_owned(), (*cells.get(2)?).to_owned()))
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
    let listed: BTreeSet<String> = owners().into_keys().collect();
    assert_eq!(listed, migration_tables());
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
        if owner != krate {
            strays.insert((table, file));
        }
    }
    let expected: BTreeSet<(String, String)> = NOT_YET_MOVED
        .iter()
        .map(|(t, f)| ((*t).to_owned(), (*f).to_owned()))
        .collect();
    let new: Vec<_> = strays.difference(&expected).collect();
    assert!(
        new.is_empty(),
        "tables written outside their owner (ARCHITECTURE.md, \"Who writes each table\"): {new:?}"
    );
    let moved: Vec<_> = expected.difference(&strays).collect();
    assert!(
        moved.is_empty(),
        "these writes moved to their owner: drop them from NOT_YET_MOVED: {moved:?}"
    );
}
