//! The line of the file shown under an error, with a caret under the column, and never a
//! secret: values of secret keys (`password`, and near misses such as `pasword`) and URL
//! passwords are masked.

use crate::error::edit_distance;
use crate::store_url::redact_url;

/// Whether a key names a secret (`password`, `sentinel_password`, and near misses such as a
/// mistyped `pasword`, whose value is still someone's password).
pub(crate) fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("passw")
        || k.contains("secret")
        || k.contains("pwd")
        || k.contains("token")
        || edit_distance(&k, "password") <= 2
        || edit_distance(&k, "sentinel_password") <= 3
}

/// Where, in bytes, the value of the first secret key on `line` starts (`password: VALUE`,
/// also in flow mappings and quoted), if any: from there on the line is not shown.
pub(crate) fn secret_value_start(line: &str) -> Option<usize> {
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b != b':' {
            continue;
        }
        if bytes.get(i + 1).is_some_and(|n| !n.is_ascii_whitespace()) {
            continue;
        }
        let before = &line[..i];
        let key = before
            .rsplit(|c: char| c.is_whitespace() || matches!(c, '{' | ',' | '[' | '-' | '?'))
            .next()
            .unwrap_or(before)
            .trim_matches(|c| c == '"' || c == '\'');
        if !key.is_empty() && is_secret_key(key) {
            return Some(i + 1);
        }
    }
    None
}

/// `line` as it may be shown: secret values replaced by `***` (the rest of the line after a
/// secret key is dropped), and URL passwords hidden.
pub(crate) fn shown_line(line: &str) -> String {
    let line = match secret_value_start(line) {
        Some(at) => format!("{} ***", &line[..at]),
        None => line.to_string(),
    };
    redact_url(&line)
}

/// The numbered line `line` of `text` with a caret under `column`.
pub(crate) fn snippet(text: &str, line: u32, column: Option<u32>) -> Option<String> {
    let content = text.lines().nth(line.checked_sub(1)? as usize)?;
    let shown: String = shown_line(content)
        .chars()
        .take(200)
        .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
        .collect();
    let number = line.to_string();
    let pad = " ".repeat(number.len());
    let mut out = format!("{pad} |\n{number} | {}", shown.trim_end());
    if let Some(col) = column {
        let col = col.max(1) as usize;
        // The column in the shown line: hidden secrets before it change its position.
        let before: String = content.chars().take(col - 1).collect();
        let col = match secret_value_start(content) {
            // At or after a hidden value: on its `***`.
            Some(at) if before.len() >= at => redact_url(&content[..at]).chars().count() + 2,
            _ if before.chars().count() == col - 1 => redact_url(&before).chars().count() + 1,
            _ => col,
        };
        if col <= shown.chars().count() + 1 {
            let lead: String = shown
                .chars()
                .take(col - 1)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            out.push_str(&format!("\n{pad} | {lead}^"));
        }
    }
    Some(out)
}
