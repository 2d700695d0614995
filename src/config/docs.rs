//! The text made from the settings' declarations: the flags' help, `collabd.example.toml`
//! ([`Settings::reference_toml`]) and the README's configuration table
//! ([`Settings::markdown_table`]).

use std::fmt::Write as _;

use serde::Serialize;

use super::Settings;

/// One setting as declared.
#[derive(Debug, Clone, PartialEq)]
pub struct Declared {
    /// The setting's name (its key in the file; `COLLABD_<NAME>` in the environment).
    pub name: &'static str,
    /// The doc comment, one line per `///` line (each with the space that follows `///`).
    pub doc: &'static str,
    /// The default as a TOML value; `None`: unset.
    pub default: Option<String>,
    /// For a setting unset by default, a value to show in the example file.
    pub example: Option<String>,
}

impl Declared {
    /// The doc's lines as written; an empty line separates paragraphs.
    pub fn doc_lines(&self) -> impl Iterator<Item = &'static str> {
        self.doc
            .lines()
            .map(|line| line.strip_prefix(' ').unwrap_or(line).trim_end())
    }

    /// The first paragraph of the doc, on one line.
    pub fn summary(&self) -> String {
        self.doc_lines()
            .take_while(|line| !line.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The default as shown in help and in the README.
    #[cfg_attr(not(feature = "cli"), allow(dead_code))]
    fn default_text(&self) -> &str {
        self.default.as_deref().unwrap_or("unset")
    }
}

/// The declaration of the setting `name`.
#[cfg(feature = "cli")]
fn declared(name: &str) -> &'static Declared {
    Settings::declared()
        .iter()
        .find(|d| d.name == name)
        .expect("every flag is a declared setting")
}

/// `-h`: the summary (without its final period, as clap has it) and the default.
#[cfg(feature = "cli")]
pub(super) fn flag_help(name: &str) -> String {
    let d = declared(name);
    let summary = d.summary();
    let summary = summary.strip_suffix('.').unwrap_or(&summary);
    format!("{summary} [default: {}]", d.default_text())
}

/// `--help`: the whole doc and the default.
#[cfg(feature = "cli")]
pub(super) fn flag_long_help(name: &str) -> String {
    let d = declared(name);
    let doc = d.doc_lines().collect::<Vec<_>>().join("\n");
    format!("{doc}\n\n[default: {}]", d.default_text())
}

/// `value` as a TOML value (`None` for a `None`).
pub(super) fn toml_value<T: Serialize + ?Sized>(value: &T) -> Option<String> {
    let value = serde_json::to_value(value).expect("settings serialize");
    toml_from_json(&value)
}

fn toml_from_json(value: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    Some(match value {
        Value::Null => return None,
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        // JSON's escapes are TOML's, except that TOML also wants DEL escaped.
        Value::String(s) => serde_json::to_string(s)
            .expect("a string serializes")
            .replace('\u{7f}', "\\u007F"),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().filter_map(toml_from_json).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(fields) => {
            let fields: Vec<String> = fields
                .iter()
                .filter_map(|(k, v)| {
                    Some(format!(
                        "{} = {}",
                        toml_from_json(&k.as_str().into())?,
                        toml_from_json(v)?
                    ))
                })
                .collect();
            format!("{{ {} }}", fields.join(", "))
        }
    })
}

/// The start of `collabd.example.toml`, before the settings.
const TOML_HEADER: &str = "\
# collabd configuration. Copy to collabd.toml (read from the working directory) or pass
# --config PATH. Every key can also be set as COLLABD_<KEY> in the environment
# (e.g. COLLABD_BIND=0.0.0.0:1234) and, all but auth_secret, as a flag
# (--bind 0.0.0.0:1234). Precedence: defaults < this file < environment < flags.
# Values shown are the defaults; durations are in milliseconds.
# An unknown key in this file is an error; COLLABD_* variables that name no setting
# (e.g. COLLABD_PORT injected by an orchestrator) are ignored with a warning. Settings
# are checked together at startup; a bad combination stops the server before it binds.
#
# Generated from the declarations in src/config.rs: edit them there, then run
# UPDATE_DOCS=1 cargo test --lib config
";

/// The README's configuration table lies between these lines.
#[cfg(test)]
pub(super) const TABLE_BEGIN: &str = "<!-- settings table: generated from src/config.rs by UPDATE_DOCS=1 cargo test --lib config -->";
#[cfg(test)]
pub(super) const TABLE_END: &str = "<!-- end of settings table -->";

impl Settings {
    /// `collabd.example.toml`: every setting with its doc and default (settings unset by
    /// default are shown commented out, with an example value).
    pub fn reference_toml() -> String {
        let mut out = String::from(TOML_HEADER);
        for d in Settings::declared() {
            out.push('\n');
            for line in d.doc_lines() {
                if line.is_empty() {
                    out.push_str("#\n");
                } else {
                    writeln!(out, "# {line}").unwrap();
                }
            }
            match (&d.default, &d.example) {
                (Some(value), _) => writeln!(out, "{} = {value}", d.name),
                (None, Some(example)) => writeln!(out, "# {} = {example}", d.name),
                (None, None) => writeln!(out, "# {}: unset by default", d.name),
            }
            .unwrap();
        }
        out
    }

    /// The README's configuration table: every setting, its default and its summary.
    pub fn markdown_table() -> String {
        let cell = |text: &str| text.replace('|', "\\|");
        let mut out = String::from("| key | default | what |\n|---|---|---|\n");
        for d in Settings::declared() {
            let default = match &d.default {
                Some(value) => format!("`{}`", cell(value)),
                None => "unset".into(),
            };
            writeln!(out, "| `{}` | {default} | {} |", d.name, cell(&d.summary())).unwrap();
        }
        out
    }
}
