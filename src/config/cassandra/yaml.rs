//! A YAML document as a tree, as SnakeYAML (Cassandra's reader, YAML 1.1) would see it, with the
//! position of every value. Knows nothing of Cassandra.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

// saphyr-parser (the parser of saphyr, the maintained successor of yaml-rust) rather than a serde
// deserializer: its events give the position of every value, the scalar as written (SnakeYAML reads
// `password: 0123` as the string "0123"), whether it was quoted, and duplicate keys. docs/cassandra-yaml.md
// says why not serde_yaml and its forks.
use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Span, StrInput};

/// Nesting deeper than this is refused (cassandra.yaml nests three levels).
const MAX_DEPTH: usize = 64;
/// How many nodes alias expansion may copy (a "billion laughs" file stops here).
const MAX_ALIAS_NODES: usize = 100_000;

/// A position in the file, both 1-based.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Pos {
    pub(super) line: usize,
    pub(super) column: usize,
}

impl Pos {
    /// The start of the file, for what is about the file as a whole.
    pub(super) const START: Pos = Pos { line: 1, column: 1 };
}

impl From<&saphyr_parser::Marker> for Pos {
    fn from(m: &saphyr_parser::Marker) -> Self {
        Pos {
            line: m.line(),
            column: m.col() + 1,
        }
    }
}

#[derive(Clone, Debug)]
pub(super) struct Node<'a> {
    pub(super) at: Pos,
    pub(super) kind: Kind<'a>,
}

#[derive(Clone, Debug)]
pub(super) enum Kind<'a> {
    /// A scalar as written. `plain` scalars (not quoted, no block style, no `!!str` tag) are the
    /// ones YAML resolves to null, booleans and numbers.
    Scalar {
        text: Cow<'a, str>,
        plain: bool,
    },
    Seq(Vec<Node<'a>>),
    /// Entries in file order, duplicates kept.
    Map(Vec<(Node<'a>, Node<'a>)>),
}

/// The entries of a mapping.
pub(super) type Entries<'a> = [(Node<'a>, Node<'a>)];

impl Node<'_> {
    /// `~`, `null` or an empty value: "not set".
    pub(super) fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, plain: true }
            if matches!(text.as_ref(), "" | "~" | "null" | "Null" | "NULL"))
    }

    pub(super) fn scalar(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// What the value is, for "found ..." in type errors.
    pub(super) fn describe(&self) -> String {
        match &self.kind {
            Kind::Seq(_) => "a list".into(),
            Kind::Map(_) => "a mapping".into(),
            Kind::Scalar { .. } if self.is_null() => "nothing (null)".into(),
            Kind::Scalar { text, plain } => {
                let shown = shorten(text);
                if !plain {
                    format!("string {shown:?}")
                } else if matches!(
                    text.as_ref(),
                    "true" | "True" | "TRUE" | "false" | "False" | "FALSE"
                ) {
                    format!("boolean {shown}")
                } else if text.parse::<i64>().is_ok() {
                    format!("integer {shown}")
                } else if text.parse::<f64>().is_ok() && text.chars().any(|c| c.is_ascii_digit()) {
                    format!("number {shown}")
                } else {
                    format!("string {shown:?}")
                }
            }
        }
    }
}

/// The first line of `text`, at most 60 characters.
fn shorten(text: &str) -> String {
    let first = text.lines().next().unwrap_or_default();
    if first.chars().count() > 60 {
        first.chars().take(57).chain("...".chars()).collect()
    } else if first.len() < text.len() {
        format!("{first}...")
    } else {
        text.to_string()
    }
}

/// Why a text is not valid YAML, as the message after "not valid YAML: ".
#[derive(Debug, thiserror::Error)]
pub enum SyntaxError {
    #[error("{}", .0.info())]
    Scanner(ScanError),
    #[error("unexpected {event} outside a document")]
    OutsideDocument { event: String },
    #[error("unexpected {event}")]
    Unexpected { event: String },
    #[error("alias to an unknown anchor")]
    UnknownAnchor,
    #[error("nested deeper than {} levels", MAX_DEPTH)]
    TooDeep,
    #[error("aliases expand to more than {} values", MAX_ALIAS_NODES)]
    AliasExpansion,
}

/// Why a text is not one YAML document with a value.
#[derive(Debug)]
pub(super) enum ParseError {
    Syntax {
        error: SyntaxError,
        at: Pos,
    },
    /// No document, or only a null one (an empty file, or only comments).
    Empty,
    MultipleDocuments {
        at: Pos,
    },
}

impl From<ScanError> for ParseError {
    fn from(e: ScanError) -> Self {
        let at = e.marker().into();
        ParseError::Syntax {
            error: SyntaxError::Scanner(e),
            at,
        }
    }
}

/// Parses the single YAML document of `text` into a tree.
pub(super) fn parse(text: &str) -> Result<Node<'_>, ParseError> {
    let mut builder = TreeBuilder {
        parser: Parser::new_from_str(text),
        anchors: HashMap::new(),
        alias_nodes: 0,
    };
    let mut root = None;
    loop {
        let (event, at) = builder.next()?;
        match event {
            Event::StreamStart | Event::Nothing | Event::DocumentEnd => {}
            Event::StreamEnd => break,
            Event::DocumentStart(_) if root.is_some() => {
                return Err(ParseError::MultipleDocuments { at });
            }
            Event::DocumentStart(_) => {
                let (event, at) = builder.next()?;
                root = Some(builder.node(event, at, 0)?);
            }
            _ => {
                let event = format!("{event:?}");
                return Err(syntax(SyntaxError::OutsideDocument { event }, at));
            }
        }
    }
    match root {
        Some(root) if !root.is_null() => Ok(root),
        _ => Err(ParseError::Empty),
    }
}

fn syntax(error: SyntaxError, at: Pos) -> ParseError {
    ParseError::Syntax { error, at }
}

struct TreeBuilder<'a> {
    parser: Parser<'a, StrInput<'a>>,
    anchors: HashMap<usize, Node<'a>>,
    alias_nodes: usize,
}

impl<'a> TreeBuilder<'a> {
    fn next(&mut self) -> Result<(Event<'a>, Pos), ParseError> {
        match self.parser.next_event() {
            Some(Ok((event, Span { start, .. }))) => Ok((event, (&start).into())),
            Some(Err(e)) => Err(e.into()),
            None => Ok((Event::StreamEnd, Pos { line: 0, column: 0 })),
        }
    }

    /// The node that `event` starts, with everything nested in it.
    fn node(&mut self, event: Event<'a>, at: Pos, depth: usize) -> Result<Node<'a>, ParseError> {
        if depth > MAX_DEPTH {
            return Err(syntax(SyntaxError::TooDeep, at));
        }
        let (kind, anchor) = match event {
            Event::Scalar(text, style, anchor, tag) => {
                let str_tag = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let plain = style == ScalarStyle::Plain && !str_tag;
                (Kind::Scalar { text, plain }, anchor)
            }
            Event::SequenceStart(anchor, _) => (Kind::Seq(self.items(depth)?), anchor),
            Event::MappingStart(anchor, _) => (Kind::Map(self.entries(depth)?), anchor),
            Event::Alias(id) => return self.alias(id, at),
            other => {
                let event = format!("{other:?}");
                return Err(syntax(SyntaxError::Unexpected { event }, at));
            }
        };
        let node = Node { at, kind };
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        Ok(node)
    }

    /// The items of a sequence, up to its end.
    fn items(&mut self, depth: usize) -> Result<Vec<Node<'a>>, ParseError> {
        let mut items = Vec::new();
        loop {
            let (event, at) = self.next()?;
            if event == Event::SequenceEnd {
                return Ok(items);
            }
            items.push(self.node(event, at, depth + 1)?);
        }
    }

    /// The entries of a mapping, up to its end.
    fn entries(&mut self, depth: usize) -> Result<Vec<(Node<'a>, Node<'a>)>, ParseError> {
        let mut entries = Vec::new();
        loop {
            let (event, key_at) = self.next()?;
            if event == Event::MappingEnd {
                return Ok(entries);
            }
            let key = self.node(event, key_at, depth + 1)?;
            let (event, value_at) = self.next()?;
            let value = self.node(event, value_at, depth + 1)?;
            entries.push((key, value));
        }
    }

    /// A copy of the anchored node, reported where the alias is.
    fn alias(&mut self, id: usize, at: Pos) -> Result<Node<'a>, ParseError> {
        let Some(target) = self.anchors.get(&id) else {
            return Err(syntax(SyntaxError::UnknownAnchor, at));
        };
        self.alias_nodes += count_nodes(target);
        if self.alias_nodes > MAX_ALIAS_NODES {
            return Err(syntax(SyntaxError::AliasExpansion, at));
        }
        let mut copy = target.clone();
        copy.at = at;
        Ok(copy)
    }
}

fn count_nodes(node: &Node<'_>) -> usize {
    1 + match &node.kind {
        Kind::Scalar { .. } => 0,
        Kind::Seq(items) => items.iter().map(count_nodes).sum(),
        Kind::Map(entries) => entries
            .iter()
            .map(|(k, v)| count_nodes(k) + count_nodes(v))
            .sum(),
    }
}

/// `(name, key, value)` of one mapping entry with a scalar key.
pub(super) type Entry<'n, 'a> = (&'n str, &'n Node<'a>, &'n Node<'a>);

/// The entries of a mapping with scalar keys, as SnakeYAML reads them.
pub(super) struct Keyed<'n, 'a> {
    /// In file order; of duplicate keys only the last, which wins.
    pub(super) entries: Vec<Entry<'n, 'a>>,
    /// Names given more than once, with the line of each occurrence.
    pub(super) duplicates: Vec<(&'n str, Vec<usize>)>,
    /// Keys that are not scalars (`? [a, b]: ...`).
    pub(super) odd: Vec<&'n Node<'a>>,
}

impl<'n, 'a> Keyed<'n, 'a> {
    /// The value of `name`, if the mapping has it.
    pub(super) fn get(&self, name: &str) -> Option<&'n Node<'a>> {
        self.entries
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, _, v)| *v)
    }
}

fn is_merge_key(key: &Node<'_>) -> bool {
    matches!(&key.kind, Kind::Scalar { text, plain: true } if text == "<<")
}

/// The entries of a mapping as SnakeYAML resolves them: merge keys applied, the last of duplicate
/// keys kept. Indexed by name, not scanned: a file of tens of thousands of keys must not take
/// quadratic time.
pub(super) fn last_wins<'n, 'a>(entries: &'n Entries<'a>) -> Keyed<'n, 'a> {
    let mut odd = Vec::new();
    let merged = merged_entries(entries, &mut odd);
    let mut explicit: Vec<Entry<'n, 'a>> = Vec::new();
    let mut first_line: HashMap<&'n str, usize> = HashMap::new();
    let mut dup_of: HashMap<&'n str, usize> = HashMap::new();
    let mut duplicates: Vec<(&'n str, Vec<usize>)> = Vec::new();
    // Where each name occurs last among the mapping's own keys: that occurrence is the one kept.
    let mut last: HashMap<&'n str, usize> = HashMap::new();
    for (key, value) in entries.iter().filter(|(k, _)| !is_merge_key(k)) {
        let Some(name) = key.scalar() else {
            odd.push(key);
            continue;
        };
        match (first_line.get(name), dup_of.get(name)) {
            (None, _) => {
                first_line.insert(name, key.at.line);
            }
            (Some(_), Some(&i)) => duplicates[i].1.push(key.at.line),
            (Some(&first), None) => {
                dup_of.insert(name, duplicates.len());
                duplicates.push((name, vec![first, key.at.line]));
            }
        }
        last.insert(name, explicit.len());
        explicit.push((name, key, value));
    }
    // Merged entries the mapping does not override, in merge order, then the mapping's own keys in
    // the order of their last occurrence.
    let mut out: Vec<_> = merged
        .into_iter()
        .filter(|(n, _, _)| !last.contains_key(n))
        .collect();
    out.extend(
        explicit
            .into_iter()
            .enumerate()
            .filter(|(i, (n, _, _))| last.get(n) == Some(i))
            .map(|(_, e)| e),
    );
    Keyed {
        entries: out,
        duplicates,
        odd,
    }
}

/// The entries that YAML 1.1 merge keys (`<<: *defaults`) bring in; of several merged mappings the
/// first one wins. A merge key whose value is not a mapping goes to `odd`.
fn merged_entries<'n, 'a>(
    entries: &'n Entries<'a>,
    odd: &mut Vec<&'n Node<'a>>,
) -> Vec<Entry<'n, 'a>> {
    let mut merged = Vec::new();
    let mut names: HashSet<&'n str> = HashSet::new();
    for (key, value) in entries.iter().filter(|(k, _)| is_merge_key(k)) {
        let maps: Vec<&'n Node<'a>> = match &value.kind {
            Kind::Seq(items) => items.iter().collect(),
            _ => vec![value],
        };
        for map in maps {
            let Kind::Map(inner) = &map.kind else {
                odd.push(key);
                continue;
            };
            for entry in last_wins(inner).entries {
                if names.insert(entry.0) {
                    merged.push(entry);
                }
            }
        }
    }
    merged
}
