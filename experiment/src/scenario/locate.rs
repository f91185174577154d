//! Where a field is in a scenario file: a field path (`faults[2].at_ms`) to a line and column, so
//! a check made on the parsed scenario can still point at the text.

use toml_edit::{ImDocument, Item};

/// Line and column (from 1, in characters) of byte `offset` in `text`.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The line and column of `path` in `text`: its key where the field is written, else the
/// deepest table or array element on the way (for a missing field, the table that lacks it).
pub(super) fn field(text: &str, path: &str) -> Option<(usize, usize)> {
    let doc = ImDocument::parse(text).ok()?;
    let mut item: &Item = doc.as_item();
    let mut found = item.span().map(|r| r.start);
    for segment in segments(path) {
        let next = match segment {
            Segment::Key(key) => item.as_table_like()?.get_key_value(key).map(|(k, v)| {
                found = k.span().or(v.span()).map(|r| r.start).or(found);
                v
            }),
            Segment::Index(i) => item.get(i).inspect(|v| {
                found = v.span().map(|r| r.start).or(found);
            }),
        };
        match next {
            Some(next) => item = next,
            None => break,
        }
    }
    found.map(|start| line_col(text, start))
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// `faults[2].groups[0]` as `faults`, 2, `groups`, 0.
fn segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, rest) = part.split_once('[').unwrap_or((part, ""));
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        for index in rest.split('[') {
            if let Ok(i) = index.trim_end_matches(']').parse() {
                out.push(Segment::Index(i));
            }
        }
    }
    out
}

/// For a field the file lacks: a key written beside it that looks like a misspelling of it, and
/// where that key is.
pub(super) fn misspelling(
    text: &str,
    table_path: &str,
    missing: &str,
) -> Option<(String, (usize, usize))> {
    let doc = ImDocument::parse(text).ok()?;
    let mut item: &Item = doc.as_item();
    for segment in segments(table_path) {
        item = match segment {
            Segment::Key(key) => item.as_table_like()?.get(key)?,
            Segment::Index(i) => item.get(i)?,
        };
    }
    let (key, _) = item
        .as_table_like()?
        .iter()
        .find(|(k, _)| *k != missing && edit_distance(k, missing) <= 2)?;
    let (k, _) = item.as_table_like()?.get_key_value(key)?;
    let start = k.span()?.start;
    Some((key.to_string(), line_col(text, start)))
}

/// Levenshtein distance, for spotting a misspelled key.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}
