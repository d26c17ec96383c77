//! Certificate chains and keys read from PEM files, and the set the TLS listener serves: the
//! first pair is the default, the others are chosen when the client's SNI is one of their
//! certificate's DNS names (wildcards included, as a client would verify them).
//!
//! [`CertStore`] is what rustls asks for a certificate on each handshake. Its set is swapped
//! whole ([`CertStore::swap`]): by the file watcher ([`crate::tls::reload`]) and by anything
//! else that reloads (a configuration reload builds a [`CertSet`] with [`CertSet::load`] and
//! swaps it in). Handshakes in progress keep the set they started with.

use arc_swap::ArcSwap;
use fleetgate_config::CertificatePair;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::Path;
use std::sync::Arc;

/// Reads a certificate chain (leaf first) and its private key, and checks that the key is the
/// certificate's. The message names the files and says what is wrong.
pub fn load_pair(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, String> {
    let (cert_name, key_name) = (cert_file.display(), key_file.display());
    let chain = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("certificate file {cert_name:?} cannot be read: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err(format!("certificate file {cert_name:?} holds no certificate"));
    };
    webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("certificate file {cert_name:?}: the first certificate is not valid X.509: {e}"))?;
    let key =
        PrivateKeyDer::from_pem_file(key_file).map_err(|e| format!("key file {key_name:?} cannot be read: {e}"))?;
    let signer = super::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("key file {key_name:?}: the private key cannot be used: {e}"))?;
    let pair = CertifiedKey::new(chain, signer);
    match pair.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(pair),
        Err(rustls::Error::InconsistentKeys(_)) => Err(format!(
            "certificate {cert_name:?} and key {key_name:?} do not match: the key is not the certificate's private key"
        )),
        Err(e) => Err(format!(
            "certificate {cert_name:?} and key {key_name:?} cannot be checked against each other: {e}"
        )),
    }
}

/// The certificates served, the default first.
#[derive(Debug)]
pub struct CertSet {
    keys: Vec<Arc<CertifiedKey>>,
}

impl CertSet {
    /// Reads every pair (`tls.certificates`); the first error, naming its entry and files.
    pub fn load(pairs: &[CertificatePair]) -> Result<CertSet, String> {
        let mut keys = Vec::with_capacity(pairs.len());
        for (i, p) in pairs.iter().enumerate() {
            let key = load_pair(&p.cert_file, &p.key_file).map_err(|why| format!("tls.certificates[{i}]: {why}"))?;
            keys.push(Arc::new(key));
        }
        if keys.is_empty() {
            return Err("tls.certificates is empty".to_string());
        }
        Ok(CertSet { keys })
    }

    /// The certificate for a client that asked for `sni`: the first whose names cover it, else
    /// the default.
    pub fn choose(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let default = &self.keys[0];
        if self.keys.len() == 1 {
            return default;
        }
        let Some(name) = sni.and_then(|s| ServerName::try_from(s).ok()) else {
            return default;
        };
        self.keys.iter().find(|k| covers(k, &name)).unwrap_or(default)
    }
}

/// Whether the leaf certificate of `key` is valid for `name`.
fn covers(key: &CertifiedKey, name: &ServerName<'_>) -> bool {
    let Some(leaf) = key.cert.first() else {
        return false;
    };
    webpki::EndEntityCert::try_from(leaf).is_ok_and(|cert| cert.verify_is_valid_for_subject_name(name).is_ok())
}

/// The certificate set the TLS listener serves, swappable while handshakes go on.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<CertSet>,
}

impl CertStore {
    pub fn new(set: CertSet) -> Arc<Self> {
        Arc::new(CertStore {
            current: ArcSwap::from_pointee(set),
        })
    }

    /// Serves `set` from the next handshake on.
    pub fn swap(&self, set: CertSet) {
        self.current.store(Arc::new(set));
    }

    /// The set served now.
    pub fn current(&self) -> Arc<CertSet> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().choose(hello.server_name()).clone())
    }
}
