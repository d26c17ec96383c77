//! `store.tls`: the TLS files, checked when the file is read (they exist, are readable, and
//! hold what they should), never echoing their contents.

use crate::error::{CERT_FILE_ACCEPTED, KEY_FILE_ACCEPTED};
use crate::fields::{nullable, refuse_at};
use fleetgate_store::TlsFiles;
use serde::{Deserialize, Deserializer};
use std::path::PathBuf;

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Tls {
    ca_file: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
}

/// `store.tls`: written (even empty) turns TLS on; a client certificate comes with its key, and
/// then each file named is checked.
pub(crate) fn tls<'de, D: Deserializer<'de>>(d: D) -> Result<Option<TlsFiles>, D::Error> {
    let t: Tls = nullable(d)?;
    let (ca_file, cert_file, key_file) = checked_files(t.ca_file, t.cert_file, t.key_file)?;
    Ok(Some(TlsFiles {
        ca_file,
        cert_file,
        key_file,
    }))
}

/// The CA file, client certificate and key of a `tls` section, checked.
pub(crate) type CheckedFiles = (Option<PathBuf>, Option<PathBuf>, Option<PathBuf>);

/// A CA file and an optional client certificate with its key, as written in a `tls` section
/// (`store.tls`, `upstreams.*.tls`): the certificate comes with its key, and each file named
/// is checked ([`pem_file`]); errors are located at the field.
pub(crate) fn checked_files<E: serde::de::Error>(
    ca_file: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
) -> Result<CheckedFiles, E> {
    let pair = "accepted: both cert_file and key_file (a client certificate and its private key), or neither";
    match (&cert_file, &key_file) {
        (Some(_), None) => {
            return Err(refuse_at(
                ".cert_file",
                format!("cert_file is set without key_file; {pair}"),
            ))
        }
        (None, Some(_)) => {
            return Err(refuse_at(
                ".key_file",
                format!("key_file is set without cert_file; {pair}"),
            ))
        }
        _ => {}
    }
    let check = |field: &str, name: Option<String>, certificate: bool| {
        name.map(|n| pem_file(&n, certificate).map_err(|why| refuse_at(field, why)))
            .transpose()
    };
    Ok((
        check(".ca_file", ca_file, true)?,
        check(".cert_file", cert_file, true)?,
        check(".key_file", key_file, false)?,
    ))
}

/// Largest TLS file read, in bytes (a CA bundle is a few hundred KiB).
const PEM_MAX_BYTES: u64 = 4 << 20;

/// A readable PEM file holding a certificate (or a private key). The file's contents never
/// appear in a message.
pub(crate) fn pem_file(name: &str, certificate: bool) -> Result<PathBuf, String> {
    use std::io::Read;
    let accepted = if certificate {
        CERT_FILE_ACCEPTED
    } else {
        KEY_FILE_ACCEPTED
    };
    let bad = |why: String| format!("{why}; accepted: {accepted}");
    if name.trim().is_empty() {
        return Err(bad("no file is named".to_string()));
    }
    let file = PathBuf::from(name);
    let opened = std::fs::File::open(&file).map_err(|e| {
        bad(match e.kind() {
            std::io::ErrorKind::NotFound => format!("file {name:?} does not exist"),
            std::io::ErrorKind::PermissionDenied => format!("file {name:?} is not readable (permission denied)"),
            _ => format!("file {name:?} cannot be opened: {e}"),
        })
    })?;
    let meta = opened
        .metadata()
        .map_err(|e| bad(format!("file {name:?} cannot be read: {e}")))?;
    if meta.is_dir() {
        return Err(bad(format!("{name:?} is a directory, not a file")));
    }
    if !meta.is_file() {
        return Err(bad(format!("{name:?} is not a regular file")));
    }
    let mut bytes = Vec::new();
    opened
        .take(PEM_MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(format!("file {name:?} cannot be read: {e}")))?;
    if bytes.len() as u64 > PEM_MAX_BYTES {
        return Err(bad(format!(
            "file {name:?} is larger than {} MiB, too large for a PEM file",
            PEM_MAX_BYTES >> 20
        )));
    }
    let text = String::from_utf8_lossy(&bytes);
    let begins: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("-----BEGIN ") && l.ends_with("-----"))
        .collect();
    if begins.is_empty() {
        return Err(bad(format!(
            "file {name:?} is not PEM (it has no `-----BEGIN ...-----` line)"
        )));
    }
    let found = begins.iter().any(|l| match certificate {
        true => *l == "-----BEGIN CERTIFICATE-----" || *l == "-----BEGIN TRUSTED CERTIFICATE-----",
        false => l.ends_with("PRIVATE KEY-----"),
    });
    if !found {
        let what = if certificate {
            "no certificate"
        } else {
            "no private key"
        };
        return Err(bad(format!("file {name:?} holds {what}")));
    }
    Ok(file)
}
