//! `--set key=value`: ringseal keys given on the command line and applied over the config file, or over
//! the config derived from cassandra.yaml, so that a node with only a cassandra.yaml can still set a
//! ringseal-only key (`tls.accept_v1_certificates`, `[metrics]`, `[limits]`) without writing a file.

use toml::{Table, Value};

use super::ConfigError;

/// One `--set`: a dotted key into the file's tables and a TOML value.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// `tls.accept_v1_certificates` as its segments.
    pub key: Vec<String>,
    pub value: Value,
}

impl Override {
    /// Parses `key=value`. The value is a TOML value (`true`, `5`, `"10s"`, `["a", "b"]`); one that is
    /// not valid TOML and does not start like a quoted string, array or inline table is taken as a
    /// string, so that file names and addresses need no shell-quoted TOML quotes
    /// (`tls.truststore=/etc/c/trust.jks`). That cannot turn a typo into another setting: every key
    /// has a type, and `tls.accept_v1_certificates=ture` is refused as a string where a boolean belongs.
    pub fn parse(arg: &str) -> Result<Self, ConfigError> {
        let error = |message: String| ConfigError::Set {
            arg: arg.to_owned(),
            message,
        };
        let Some((key, text)) = arg.split_once('=') else {
            return Err(error(
                "expected KEY=VALUE, e.g. --set tls.accept_v1_certificates=true".into(),
            ));
        };
        let key: Vec<String> = key.trim().split('.').map(str::to_owned).collect();
        if let Some(bad) = key.iter().find(|s| {
            s.is_empty()
                || !s
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        }) {
            return Err(error(format!(
                "{:?} is not a key name; keys are dotted names of the config file, e.g. \
                 tls.accept_v1_certificates or limits.connect_timeout",
                bad
            )));
        }
        if key.last().is_some_and(|k| k.ends_with("password")) {
            // Checked before the value is looked at, and the message repeats only the key.
            return Err(ConfigError::Set {
                arg: key.join("."),
                message: format!(
                    "a password on the command line is visible to every local user (ps, \
                     /proc/PID/cmdline); use {0}_file or {0}_env instead",
                    key.join(".")
                ),
            });
        }
        let text = text.trim();
        let value = match toml::from_str::<Table>(&format!("v = {text}")) {
            Ok(mut t) => t.remove("v").expect("the table has the key just parsed"),
            Err(e) if text.is_empty() || text.starts_with(['"', '\'', '[', '{']) => {
                return Err(error(format!(
                    "the value is not a TOML value: {}",
                    e.message().trim_end().replace('\n', " ")
                )));
            }
            Err(_) => Value::String(text.to_owned()),
        };
        Ok(Self { key, value })
    }

    /// `tls.accept_v1_certificates = true`: the override as the TOML line it stands for.
    pub fn to_toml_line(&self) -> String {
        format!("{} = {}", self.key.join("."), self.value)
    }

    /// Sets the key in `table`, creating the tables on its way.
    pub fn apply(&self, table: &mut Table) -> Result<(), ConfigError> {
        let (last, path) = self
            .key
            .split_last()
            .expect("a key has at least one segment");
        let mut at = table;
        for (i, segment) in path.iter().enumerate() {
            let entry = at
                .entry(segment.clone())
                .or_insert_with(|| Value::Table(Table::new()));
            at = match entry {
                Value::Table(t) => t,
                other => {
                    return Err(ConfigError::Set {
                        arg: self.to_toml_line(),
                        message: format!(
                            "{} is {}, not a table; --set reaches keys of tables only (a list such \
                             as [[inbound]] is replaced whole by a config file)",
                            self.key[..=i].join("."),
                            describe(other)
                        ),
                    });
                }
            };
        }
        at.insert(last.clone(), self.value.clone());
        Ok(())
    }
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "a list",
        Value::Table(_) => "a table",
        _ => "a value",
    }
}

/// Applies `overrides` in order. When `table` alone is a valid config, each override is checked as it
/// is applied, so that an unknown key or a value of the wrong type is reported against the `--set`
/// that brought it (with the file's own messages otherwise pointing into generated text).
pub fn apply_all(table: &mut Table, overrides: &[Override]) -> Result<(), ConfigError> {
    let mut attributable = parses(table).is_ok();
    for o in overrides {
        o.apply(table)?;
        if attributable && let Err(message) = parses(table) {
            return Err(ConfigError::Set {
                arg: o.to_toml_line(),
                message,
            });
        }
        attributable = true;
    }
    Ok(())
}

/// Whether `table` deserializes as a config file; the error's message otherwise.
fn parses(table: &Table) -> Result<(), String> {
    let value = Value::Table(table.clone());
    value
        .try_into::<super::FileConfig>()
        .map(drop)
        .map_err(|e| e.message().trim_end().replace('\n', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(arg: &str) -> Result<Override, String> {
        Override::parse(arg).map_err(|e| e.to_string())
    }

    #[test]
    fn values_are_toml_and_bare_words_are_strings() {
        let o = set("tls.accept_v1_certificates=true").unwrap();
        assert_eq!(o.key, ["tls", "accept_v1_certificates"]);
        assert_eq!(o.value, Value::Boolean(true));
        assert_eq!(
            set("limits.max_connections = 5").unwrap().value,
            Value::Integer(5)
        );
        assert_eq!(
            set("tls.truststore=/etc/c/trust.jks").unwrap().value,
            Value::String("/etc/c/trust.jks".into())
        );
        assert_eq!(
            set("tls.protocols=[\"TLSv1.3\"]").unwrap().to_toml_line(),
            "tls.protocols = [\"TLSv1.3\"]"
        );
    }

    #[test]
    fn malformed_arguments_are_refused_by_name() {
        let e = set("tls.accept_v1_certificates").unwrap_err();
        assert!(e.contains("expected KEY=VALUE"), "{e}");
        let e = set("tls..x=1").unwrap_err();
        assert!(e.contains("\"\" is not a key name"), "{e}");
        let e = set("tls.protocols=[\"TLSv1.3\"").unwrap_err();
        assert!(e.contains("not a TOML value"), "{e}");
        let e = set("tls.keystore_password=hunter2").unwrap_err();
        assert!(e.contains("tls.keystore_password_file"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_set() {
        let mut table: Table = toml::from_str(
            "[tls]\ncert = \"/c\"\nkey = \"/k\"\nca = \"/a\"\n[[inbound]]\nlisten = \"127.0.0.1:1\"\n\
             forward = \"127.0.0.1:2\"\n",
        )
        .unwrap();
        let bad = [set("tls.acept_v1_certificates=true").unwrap()];
        let e = apply_all(&mut table.clone(), &bad).unwrap_err().to_string();
        assert!(
            e.starts_with("--set tls.acept_v1_certificates = true: unknown field `acept_v1"),
            "{e}"
        );
        let bad = [set("tls.accept_v1_certificates=ture").unwrap()];
        let e = apply_all(&mut table.clone(), &bad).unwrap_err().to_string();
        assert!(e.contains("expected a boolean"), "{e}");
        let list = [set("inbound.mode=permissive").unwrap()];
        let e = apply_all(&mut table.clone(), &list)
            .unwrap_err()
            .to_string();
        assert!(e.contains("inbound is a list, not a table"), "{e}");
        let good = [
            set("tls.accept_v1_certificates=true").unwrap(),
            set("metrics.listen=127.0.0.1:0").unwrap(),
        ];
        apply_all(&mut table, &good).unwrap();
        assert_eq!(table["tls"]["accept_v1_certificates"], Value::Boolean(true));
        assert_eq!(table["metrics"]["listen"].as_str(), Some("127.0.0.1:0"));
    }
}
