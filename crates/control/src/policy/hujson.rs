//! HuJSON (JSON with comments and trailing commas) to a small owned tree that remembers the
//! 1-based line of every value and object key, so later validation can name the offending line.
//!
//! Driven by [`parse`]; nothing here knows about policy semantics. Only the two HuJSON
//! extensions are accepted: JSON5 niceties (single quotes, hex numbers, bare words, missing
//! commas) are syntax errors, as they are for Tailscale's `hujson` package.

use jsonc_parser::ast;
use jsonc_parser::{CollectOptions, ParseOptions};

use super::PolicyError;

/// One JSON value with the line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Json {
    pub line: usize,
    pub kind: JsonKind,
}

/// The shape of a [`Json`] value. Numbers keep their source text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum JsonKind {
    Null,
    Bool(bool),
    Number(String),
    Str(String),
    Array(Vec<Json>),
    Object(Vec<Member>),
}

/// One object member: the key, the key's line, and the value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Member {
    pub key: String,
    pub line: usize,
    pub value: Json,
}

impl Json {
    /// A short name of the value's JSON type, for "expected X, found Y" messages.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            JsonKind::Null => "null",
            JsonKind::Bool(_) => "a boolean",
            JsonKind::Number(_) => "a number",
            JsonKind::Str(_) => "a string",
            JsonKind::Array(_) => "an array",
            JsonKind::Object(_) => "an object",
        }
    }

    /// The string value, or an error naming `what` was expected to be a string.
    pub fn as_str(&self, what: &str) -> Result<&str, PolicyError> {
        match &self.kind {
            JsonKind::Str(s) => Ok(s),
            _ => Err(PolicyError::at(
                self.line,
                format!("{what} must be a string, found {}", self.type_name()),
            )),
        }
    }

    /// The array elements, or an error naming `what` was expected to be an array.
    pub fn as_array(&self, what: &str) -> Result<&[Json], PolicyError> {
        match &self.kind {
            JsonKind::Array(a) => Ok(a),
            _ => Err(PolicyError::at(
                self.line,
                format!("{what} must be an array, found {}", self.type_name()),
            )),
        }
    }

    /// The object members, or an error naming `what` was expected to be an object.
    pub fn as_object(&self, what: &str) -> Result<&[Member], PolicyError> {
        match &self.kind {
            JsonKind::Object(o) => Ok(o),
            _ => Err(PolicyError::at(
                self.line,
                format!("{what} must be an object, found {}", self.type_name()),
            )),
        }
    }

    /// The boolean value, or an error naming `what` was expected to be a boolean.
    pub fn as_bool(&self, what: &str) -> Result<bool, PolicyError> {
        match &self.kind {
            JsonKind::Bool(b) => Ok(*b),
            _ => Err(PolicyError::at(
                self.line,
                format!("{what} must be true or false, found {}", self.type_name()),
            )),
        }
    }
}

/// Parses HuJSON text. Syntax errors carry the line and, in the message, the column.
pub(crate) fn parse(text: &str) -> Result<Json, PolicyError> {
    let options = ParseOptions {
        allow_comments: true,
        allow_trailing_commas: true,
        allow_loose_object_property_names: false,
        allow_missing_commas: false,
        allow_single_quoted_strings: false,
        allow_hexadecimal_numbers: false,
        allow_unary_plus_numbers: false,
        allow_bare_decimal_point_numbers: false,
        allow_non_finite_numbers: false,
        allow_extended_string_escapes: false,
    };
    let result =
        jsonc_parser::parse_to_ast(text, &CollectOptions::default(), &options).map_err(|e| {
            PolicyError::at(
                e.line_display(),
                format!(
                    "syntax error at column {}: {}",
                    e.column_display(),
                    e.kind()
                ),
            )
        })?;
    let lines = LineIndex::new(text);
    match result.value {
        Some(v) => convert(&v, &lines),
        None => Err(PolicyError::at(
            1,
            "the policy is empty; expected a JSON object",
        )),
    }
}

/// Maps byte offsets to 1-based line numbers.
struct LineIndex {
    /// Byte offsets of every `\n`.
    newlines: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        LineIndex {
            newlines: text
                .bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i)
                .collect(),
        }
    }

    fn line(&self, offset: usize) -> usize {
        // The number of newlines strictly before `offset`, plus one.
        self.newlines.partition_point(|&n| n < offset) + 1
    }
}

fn convert(value: &ast::Value<'_>, lines: &LineIndex) -> Result<Json, PolicyError> {
    let (start, kind) = match value {
        ast::Value::NullKeyword(n) => (n.range.start, JsonKind::Null),
        ast::Value::BooleanLit(b) => (b.range.start, JsonKind::Bool(b.value)),
        ast::Value::NumberLit(n) => (n.range.start, JsonKind::Number(n.value.to_string())),
        ast::Value::StringLit(s) => (s.range.start, JsonKind::Str(s.value.to_string())),
        ast::Value::Array(a) => {
            let elements = a
                .elements
                .iter()
                .map(|e| convert(e, lines))
                .collect::<Result<Vec<_>, _>>()?;
            (a.range.start, JsonKind::Array(elements))
        }
        ast::Value::Object(o) => {
            let mut members: Vec<Member> = Vec::with_capacity(o.properties.len());
            for prop in &o.properties {
                let key = prop.name.as_str().to_string();
                let line = lines.line(prop.range.start);
                if members.iter().any(|m| m.key == key) {
                    return Err(PolicyError::at(line, format!("duplicate key {key:?}")));
                }
                members.push(Member {
                    key,
                    line,
                    value: convert(&prop.value, lines)?,
                });
            }
            (o.range.start, JsonKind::Object(members))
        }
    };
    Ok(Json {
        line: lines.line(start),
        kind,
    })
}
