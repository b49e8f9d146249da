//! What a derivation has to tell besides the table: warnings and notes.

use super::yaml::Pos;

#[derive(Default)]
pub(super) struct Findings {
    /// With the line they are about (0: the file as a whole), to be listed in file order.
    warnings: Vec<(usize, String)>,
    notes: Vec<String>,
}

impl Findings {
    /// A warning about `key`, whose value is at `at`.
    pub(super) fn warn_at(&mut self, key: &str, at: Pos, why: String) {
        self.warnings
            .push((at.line, format!("{key} (line {}): {why}", at.line)));
    }

    /// A warning about the file as a whole, listed first.
    pub(super) fn warn_file(&mut self, why: String) {
        self.warnings.push((0, why));
    }

    /// A warning about a key given on each of `lines`.
    pub(super) fn duplicate(&mut self, key: &str, lines: &[usize]) {
        let list: Vec<String> = lines.iter().map(usize::to_string).collect();
        self.warnings.push((
            lines[0],
            format!(
                "{key} (lines {}): given {} times; the last one counts, as in Cassandra",
                list.join(", "),
                lines.len()
            ),
        ));
    }

    pub(super) fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    /// Warnings in file order and notes in the order given, each one log line: keys and values of
    /// the yaml are quoted in them.
    pub(super) fn into_lines(mut self) -> (Vec<String>, Vec<String>) {
        self.warnings.sort_by_key(|(line, _)| *line);
        let visible = |s: &String| crate::config::visible(s);
        (
            self.warnings.iter().map(|(_, w)| visible(w)).collect(),
            self.notes.iter().map(visible).collect(),
        )
    }
}
