//! `${VAR}` and `${VAR:-default}` substitution, done on the text before YAML parsing.
//!
//! Rules (also in docs/configuration.md):
//! * `${NAME}`: the value of the environment variable NAME. Unset: an error naming NAME and the
//!   line. Set but empty: the empty string.
//! * `${NAME:-default}`: the value of NAME, or `default` (literal text, up to the first `}`)
//!   when NAME is unset or empty.
//! * `$${` is a literal `${`. A `$` not followed by `{` is left alone.
//! * NAME is letters, digits and `_`, not starting with a digit.
//! * References inside `#` comments are left alone.
//! * A value may not contain a line break, so that line numbers in later errors stay true.
//!   Columns in later errors are mapped back to the original text.

use std::collections::BTreeMap;
use std::ffi::OsString;

/// Where substituted text came from, per line: enough to map a column in the substituted text
/// back to the column in the original file.
#[derive(Debug, Default, Clone)]
pub(crate) struct ColumnMap {
    /// line (1-based) -> replacements on that line, in order.
    lines: BTreeMap<u32, Vec<Replacement>>,
}

/// One replacement on a line, in 1-based character columns.
#[derive(Debug, Clone, Copy)]
struct Replacement {
    new_start: u64,
    new_len: u64,
    orig_start: u64,
    orig_len: u64,
}

impl ColumnMap {
    /// The column in the original text for `column` (1-based, characters) on `line` of the
    /// substituted text. A column inside a substituted value maps to the `$` of its reference.
    pub(crate) fn original_column(&self, line: u32, column: u64) -> u64 {
        let Some(reps) = self.lines.get(&line) else {
            return column;
        };
        let mut shift: i128 = 0;
        for r in reps {
            if column < r.new_start {
                break;
            }
            if column < r.new_start.saturating_add(r.new_len) {
                return r.orig_start;
            }
            shift += i128::from(r.orig_len) - i128::from(r.new_len);
        }
        let mapped = i128::from(column) + shift;
        u64::try_from(mapped.max(1)).unwrap_or(column)
    }
}

/// Why substitution failed: the line and column (1-based, original text) and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SubstError {
    pub line: u32,
    pub column: u64,
    pub message: String,
}

pub(crate) const SYNTAX_HELP: &str = "accepted: ${NAME} or ${NAME:-default}, NAME made of letters, digits and _ (not starting with a digit); write $${ for a literal ${";

/// Substitutes every reference in `text` using `lookup`.
pub(crate) fn substitute(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<OsString>,
) -> Result<(String, ColumnMap), SubstError> {
    let mut out = String::with_capacity(text.len());
    let mut map = ColumnMap::default();
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let line_no = u32::try_from(index + 1).unwrap_or(u32::MAX);
        let reps = substitute_line(line, line_no, lookup, &mut out)?;
        if !reps.is_empty() {
            map.lines.insert(line_no, reps);
        }
    }
    Ok((out, map))
}

fn substitute_line(
    line: &str,
    line_no: u32,
    lookup: &dyn Fn(&str) -> Option<OsString>,
    out: &mut String,
) -> Result<Vec<Replacement>, SubstError> {
    let chars: Vec<char> = line.chars().collect();
    let mut reps = Vec::new();
    // Column bookkeeping, 1-based, in characters.
    let mut new_col: u64 = 1;
    let mut i = 0usize;
    let mut in_single = false;
    let mut in_double = false;
    // Whether the previous character lets a quoted scalar start here.
    let mut at_token_start = true;
    // Whether the previous character is whitespace (or this is the line's start): a comment
    // starts only there.
    let mut after_space = true;
    let err = |col: usize, message: String| SubstError {
        line: line_no,
        column: col as u64 + 1,
        message,
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '$' && chars.get(i + 1) == Some(&'$') && chars.get(i + 2) == Some(&'{') {
            out.push_str("${");
            reps.push(Replacement {
                new_start: new_col,
                new_len: 2,
                orig_start: i as u64 + 1,
                orig_len: 3,
            });
            new_col += 2;
            i += 3;
            at_token_start = false;
            after_space = false;
            continue;
        }
        if c == '$' && chars.get(i + 1) == Some(&'{') {
            let start = i;
            let Some(close) = chars[i + 2..].iter().position(|&c| c == '}') else {
                return Err(err(
                    start,
                    format!("unclosed `${{` on line {line_no}: no `}}` follows on the same line; {SYNTAX_HELP}"),
                ));
            };
            let inner: String = chars[i + 2..i + 2 + close].iter().collect();
            let end = i + 2 + close + 1; // index after '}'
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner.as_str(), None),
            };
            if !valid_name(name) {
                let shown: String = inner.chars().take(60).collect();
                return Err(err(
                    start,
                    format!("`${{{shown}}}` on line {line_no} is not a valid reference; {SYNTAX_HELP}"),
                ));
            }
            if let Some(d) = default {
                if d.contains("${") {
                    return Err(err(
                        start,
                        format!("the default of `${{{name}:-...}}` on line {line_no} holds another `${{`; nested references are not supported; {SYNTAX_HELP}"),
                    ));
                }
            }
            let value = match lookup(name) {
                Some(v) => match v.into_string() {
                    Ok(s) => Some(s),
                    Err(_) => {
                        return Err(err(
                            start,
                            format!("environment variable {name} (used on line {line_no}) is not valid UTF-8"),
                        ))
                    }
                },
                None => None,
            };
            let value = match (value, default) {
                (Some(v), Some(d)) if v.is_empty() => d.to_string(),
                (Some(v), _) => v,
                (None, Some(d)) => d.to_string(),
                (None, None) => {
                    return Err(err(
                        start,
                        format!("environment variable {name} is not set (used as `${{{name}}}` on line {line_no}); set it, or give a default: `${{{name}:-VALUE}}`"),
                    ))
                }
            };
            if value.contains(['\n', '\r']) {
                return Err(err(
                    start,
                    format!("environment variable {name} (used on line {line_no}) holds a line break; substituted values must be one line"),
                ));
            }
            let new_len = value.chars().count() as u64;
            out.push_str(&value);
            reps.push(Replacement {
                new_start: new_col,
                new_len,
                orig_start: start as u64 + 1,
                orig_len: (end - start) as u64,
            });
            new_col += new_len;
            i = end;
            at_token_start = false;
            after_space = false;
            continue;
        }
        if !in_single && !in_double && c == '#' && after_space {
            // A comment: copy the rest verbatim.
            for &rest in &chars[i..] {
                out.push(rest);
            }
            return Ok(reps);
        }
        if in_double {
            if c == '\\' {
                if let Some(&next) = chars.get(i + 1) {
                    out.push(c);
                    out.push(next);
                    new_col += 2;
                    i += 2;
                    continue;
                }
            } else if c == '"' {
                in_double = false;
            }
        } else if in_single {
            if c == '\'' {
                if chars.get(i + 1) == Some(&'\'') {
                    out.push_str("''");
                    new_col += 2;
                    i += 2;
                    continue;
                }
                in_single = false;
            }
        } else if at_token_start && c == '"' {
            in_double = true;
        } else if at_token_start && c == '\'' {
            in_single = true;
        }
        at_token_start = c.is_whitespace() || matches!(c, '[' | '{' | ',');
        after_space = c.is_whitespace();
        out.push(c);
        new_col += 1;
        i += 1;
    }
    Ok(reps)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
