//! Where each key of a GitOps file is, so a pull-request check can annotate the line a
//! developer has to change (`properties.tier` of item 2), not just "the file".
//!
//! The file was already parsed for its values (`manifest.rs`); this is a second pass over
//! the YAML parser's events, which carry positions, keeping the first line of every path.

use std::collections::{HashMap, HashSet};

use saphyr_parser::{Event, Parser};

/// The line (1-based) of every key and sequence item of a file, by path.
#[derive(Debug, Default)]
pub struct Positions {
    lines: HashMap<Vec<String>, usize>,
}

/// The line (1-based) of the second `key` of one mapping in `text`: what YAML refuses as
/// a duplicate entry, whose own line the parser's error does not give.
pub fn duplicate_key(text: &str, key: &str) -> Option<usize> {
    // Per open collection: a mapping's keys so far and whether a key comes next; `None` for
    // a sequence.
    let mut open: Vec<Option<(HashSet<String>, bool)>> = Vec::new();
    for event in Parser::new_from_str(text) {
        let (event, span) = event.ok()?;
        match event {
            Event::Scalar(value, ..) => {
                if let Some(Some((seen, key_next))) = open.last_mut() {
                    if *key_next && !seen.insert(value.to_string()) && value == key {
                        return Some(span.start.line());
                    }
                    *key_next = !*key_next;
                }
            }
            Event::Alias(_) => {
                if let Some(Some((_, key_next))) = open.last_mut() {
                    *key_next = !*key_next;
                }
            }
            Event::MappingStart(..) => open.push(Some((HashSet::new(), true))),
            Event::SequenceStart(..) => open.push(None),
            Event::MappingEnd | Event::SequenceEnd => {
                open.pop();
                if let Some(Some((_, key_next))) = open.last_mut() {
                    *key_next = true;
                }
            }
            _ => {}
        }
    }
    None
}

struct Frame {
    path: Vec<String>,
    kind: Kind,
}

enum Kind {
    /// A sequence and the index of its next item.
    Seq(usize),
    /// A mapping, and the key whose value comes next (`None`: a key comes next).
    Map(Option<String>),
}

impl Positions {
    /// Indexes `text`; a file the parser refuses gives an empty index (every lookup is then
    /// the whole file).
    pub fn of(text: &str) -> Self {
        let mut lines = HashMap::new();
        let mut frames: Vec<Frame> = Vec::new();
        for event in Parser::new_from_str(text) {
            let Ok((event, span)) = event else {
                return Self::default();
            };
            let line = span.start.line();
            match event {
                Event::Scalar(value, ..) => {
                    if let Some(Frame {
                        path,
                        kind: kind @ Kind::Map(None),
                    }) = frames.last_mut()
                    {
                        let mut at = path.clone();
                        at.push(value.to_string());
                        lines.entry(at).or_insert(line);
                        *kind = Kind::Map(Some(value.to_string()));
                    } else {
                        lines.entry(value_path(&frames)).or_insert(line);
                        advance(&mut frames);
                    }
                }
                Event::Alias(_) => {
                    lines.entry(value_path(&frames)).or_insert(line);
                    advance(&mut frames);
                }
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    let path = value_path(&frames);
                    lines.entry(path.clone()).or_insert(line);
                    let kind = match event {
                        Event::MappingStart(..) => Kind::Map(None),
                        _ => Kind::Seq(0),
                    };
                    frames.push(Frame { path, kind });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    frames.pop();
                    advance(&mut frames);
                }
                _ => {}
            }
        }
        Self { lines }
    }

    /// The line of the key at `path` in the entity at `item` (`None`: a single-entity
    /// file), or of the nearest enclosing key that exists; `None` when not even the entity
    /// is found (then the whole file is meant).
    pub fn line(&self, item: Option<usize>, path: &[String]) -> Option<usize> {
        let mut at: Vec<String> = item.map(|i| i.to_string()).into_iter().collect();
        let root = at.len();
        at.extend(path.iter().cloned());
        loop {
            if let Some(line) = self.lines.get(&at) {
                return Some(*line);
            }
            if at.len() == root {
                return None;
            }
            at.pop();
        }
    }
}

/// The path of the value that comes next: the innermost sequence's next index, or the
/// innermost mapping's current key (`?` for a complex key, which no entity has).
fn value_path(frames: &[Frame]) -> Vec<String> {
    let Some(top) = frames.last() else {
        return Vec::new();
    };
    let mut path = top.path.clone();
    path.push(match &top.kind {
        Kind::Seq(i) => i.to_string(),
        Kind::Map(Some(key)) => key.clone(),
        Kind::Map(None) => "?".into(),
    });
    path
}

/// A value of the innermost container is complete.
fn advance(frames: &mut [Frame]) {
    if let Some(top) = frames.last_mut() {
        top.kind = match &top.kind {
            Kind::Seq(i) => Kind::Seq(i + 1),
            Kind::Map(Some(_)) => Kind::Map(None),
            // A complex key ended: its value comes next.
            Kind::Map(None) => Kind::Map(Some("?".into())),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn keys_of_list_items_are_found_on_their_lines() {
        let text = "\
# services
- identifier: a
  title: A
  blueprint: service
  properties:
    tier: backend
- identifier: b
  blueprint: service
  properties:
    tags:
      - x
      - 7
    tier: middle
  relations: {team: t}
";
        let at = Positions::of(text);
        assert_eq!(at.line(Some(0), &path(&["properties", "tier"])), Some(6));
        assert_eq!(at.line(Some(1), &path(&["identifier"])), Some(7));
        assert_eq!(at.line(Some(1), &path(&["properties", "tier"])), Some(13));
        assert_eq!(
            at.line(Some(1), &path(&["properties", "tags", "1"])),
            Some(12)
        );
        assert_eq!(at.line(Some(1), &path(&["relations", "team"])), Some(14));
        // A key that is not there: the nearest one that is (a missing property: `properties`).
        assert_eq!(at.line(Some(1), &path(&["properties", "lang"])), Some(9));
        assert_eq!(at.line(Some(1), &path(&["title"])), Some(7));
        assert_eq!(at.line(Some(5), &path(&["title"])), None);
    }

    #[test]
    fn a_single_entity_file_is_indexed_from_its_root() {
        let text = "identifier: a\ntitle: A\nblueprint: service\nproperties:\n  tier: x\n";
        let at = Positions::of(text);
        assert_eq!(at.line(None, &path(&["properties", "tier"])), Some(5));
        assert_eq!(at.line(None, &path(&["blueprint"])), Some(3));
        assert_eq!(at.line(None, &[]), Some(1));
        assert_eq!(
            Positions::of("a: [unclosed\n").line(None, &path(&["a"])),
            None
        );
    }
}
