//! The text made from the settings' declarations: the flags' help.

use serde::Serialize;

use super::Settings;

/// One setting as declared.
#[derive(Debug, Clone, PartialEq)]
pub struct Declared {
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
    fn default_text(&self) -> &str {
        self.default.as_deref().unwrap_or("unset")
    }
}

/// The declaration of the setting `name`.
fn declared(name: &str) -> &'static Declared {
    Settings::declared()
        .iter()
        .find(|d| d.name == name)
        .expect("every flag is a declared setting")
}

/// `-h`: the summary (without its final period, as clap has it) and the default.
pub(super) fn flag_help(name: &str) -> String {
    let d = declared(name);
    let summary = d.summary();
    let summary = summary.strip_suffix('.').unwrap_or(&summary);
    format!("{summary} [default: {}]", d.default_text())
}

/// `--help`: the whole doc and the default.
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
