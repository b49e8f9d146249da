//! Typed values from the tree, read as SnakeYAML gives them to Cassandra's `Config` fields; a value
//! of the wrong type is an error naming the file, the key and its position.

use std::path::PathBuf;

use super::error::CassandraYamlError;
use super::findings::Findings;
use super::yaml::{Kind, Node};

pub(super) const EXPECTED_SETTINGS: &str = "a mapping of settings (key: value lines)";
pub(super) const EXPECTED_MAPPING: &str = "a mapping (key: value lines indented below it)";
const EXPECTED_STRING: &str = "a string";
const EXPECTED_BOOL: &str = "a boolean";
const EXPECTED_PORT: &str = "a port number from 1 to 65535";
const EXPECTED_LIST: &str = "a list of strings";

/// Reads a cassandra.yaml's tree: the file, for errors, and what was found to say about it.
pub(super) struct Reader {
    pub(super) path: PathBuf,
    pub(super) findings: Findings,
}

impl Reader {
    /// Any scalar, as written (SnakeYAML gives a String setting the text of a number or boolean).
    pub(super) fn string(
        &self,
        key: &str,
        node: &Node<'_>,
    ) -> Result<Option<String>, CassandraYamlError> {
        if node.is_null() {
            return Ok(None);
        }
        match &node.kind {
            Kind::Scalar { text, .. } => Ok(Some(text.to_string())),
            _ => Err(self.type_error(key, EXPECTED_STRING, node, "")),
        }
    }

    /// [`Reader::string`] of a key that may be absent.
    pub(super) fn string_opt(
        &self,
        key: &str,
        node: Option<&Node<'_>>,
    ) -> Result<Option<String>, CassandraYamlError> {
        node.map_or(Ok(None), |n| self.string(key, n))
    }

    /// `true`/`false`, and SnakeYAML's `yes`/`no`/`on`/`off`, in any case, quoted or not.
    pub(super) fn boolean(
        &self,
        key: &str,
        node: &Node<'_>,
    ) -> Result<Option<bool>, CassandraYamlError> {
        if node.is_null() {
            return Ok(None);
        }
        match node.scalar().map(str::to_ascii_lowercase).as_deref() {
            Some("true" | "yes" | "on") => Ok(Some(true)),
            Some("false" | "no" | "off") => Ok(Some(false)),
            _ => Err(self.type_error(key, EXPECTED_BOOL, node, "")),
        }
    }

    /// [`Reader::boolean`] of a key that may be absent.
    pub(super) fn boolean_opt(
        &self,
        key: &str,
        node: Option<&Node<'_>>,
    ) -> Result<Option<bool>, CassandraYamlError> {
        node.map_or(Ok(None), |n| self.boolean(key, n))
    }

    /// A port: an integer (quoted or not, as SnakeYAML reads an int setting) from 1 to 65535.
    pub(super) fn port(
        &self,
        key: &str,
        node: Option<&Node<'_>>,
    ) -> Result<Option<u16>, CassandraYamlError> {
        let Some(node) = node.filter(|n| !n.is_null()) else {
            return Ok(None);
        };
        let port = node
            .scalar()
            .map(|t| t.trim().replace('_', ""))
            .and_then(|t| t.parse::<u16>().ok())
            .filter(|p| *p != 0);
        match port {
            Some(p) => Ok(Some(p)),
            None => Err(self.type_error(key, EXPECTED_PORT, node, "")),
        }
    }

    /// A list of scalars (`[a, b]` or `- a` lines).
    pub(super) fn strings(
        &self,
        key: &str,
        node: &Node<'_>,
    ) -> Result<Option<Vec<String>>, CassandraYamlError> {
        if node.is_null() {
            return Ok(None);
        }
        let Kind::Seq(items) = &node.kind else {
            return Err(self.type_error(
                key,
                EXPECTED_LIST,
                node,
                "; write it as a list, e.g. [TLSv1.2, TLSv1.3]",
            ));
        };
        items
            .iter()
            .map(|item| match &item.kind {
                Kind::Scalar { text, .. } if !item.is_null() => Ok(text.to_string()),
                _ => Err(self.type_error(&format!("{key} entry"), EXPECTED_STRING, item, "")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// `key` holds `node`, which is not `expected`.
    pub(super) fn type_error(
        &self,
        key: &str,
        expected: &'static str,
        node: &Node<'_>,
        hint: &'static str,
    ) -> CassandraYamlError {
        CassandraYamlError::Type {
            path: self.path.clone(),
            key: key.to_owned(),
            expected,
            found: node.describe(),
            line: node.at.line,
            column: node.at.column,
            hint,
        }
    }
}
