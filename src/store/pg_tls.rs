//! TLS to PostgreSQL the way libpq reads it from the connection string: `sslmode`
//! (`disable`, `allow`, `prefer` — the default —, `require`, `verify-ca`, `verify-full`) and
//! `sslrootcert`, in a URL's query or as `key=value` words. tokio-postgres knows only
//! disable / prefer / require, so the two are taken out here, the rest goes to it, and the
//! certificate check is rustls' (managed PostgreSQL — RDS, Cloud SQL, Azure, Neon — demands
//! TLS).
//!
//! As in libpq: `prefer` and `require` encrypt without checking the certificate (unless
//! `require` is given a root certificate, which makes it `verify-ca`); `verify-ca` checks the
//! chain against `sslrootcert` (or the web's roots); `verify-full` also checks the host name.
//!
//! A server certificate that is exactly one given as `sslrootcert` (the self-signed case:
//! `openssl req -x509` marks its certificate a CA, which rustls alone refuses as
//! `CaUsedAsEndEntity`) is trusted as libpq (OpenSSL) trusts it: as its own anchor; for
//! `verify-full` its name is checked as libpq checks it (the subject alternative names, or
//! the common name when it has none). A refusal names the certificate presented.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::Config;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Result<Self, String> {
        Ok(match text {
            "disable" => Self::Disable,
            // libpq tries without TLS first; with a server that takes either, both work.
            "allow" | "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode '{other}' is not one of disable, allow, prefer, require, verify-ca, verify-full"
                ))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// The connection string without its TLS words, and how to connect.
pub struct PgTls {
    pub mode: SslMode,
    pub connector: MakeRustlsConnect,
}

/// Parses `DATABASE_URL` (URL or `key=value` form). Errors name what was wrong.
pub fn parse(url: &str) -> Result<(Config, PgTls), String> {
    let (rest, sslmode, rootcert) = split(url)?;
    let mut config: Config = rest
        .parse()
        .map_err(|e| format!("not a PostgreSQL connection string: {e}"))?;
    let mut mode = match sslmode {
        Some(m) => SslMode::parse(&m)?,
        None => SslMode::Prefer,
    };
    if mode == SslMode::Require && rootcert.is_some() {
        mode = SslMode::VerifyCa; // as libpq does when a root certificate is given
    }
    config.ssl_mode(match mode {
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Prefer => PgSslMode::Prefer,
        _ => PgSslMode::Require,
    });
    let connector = MakeRustlsConnect::new(client_config(mode, rootcert.as_deref())?);
    Ok((config, PgTls { mode, connector }))
}

/// Takes `sslmode` and `sslrootcert` out of a URL's query or a `key=value` string.
fn split(url: &str) -> Result<(String, Option<String>, Option<String>), String> {
    let (mut sslmode, mut rootcert) = (None, None);
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let mut parsed = reqwest::Url::parse(url)
            .map_err(|e| format!("not a PostgreSQL connection URL: {e}"))?;
        let kept: Vec<(String, String)> = parsed
            .query_pairs()
            .filter_map(|(k, v)| match k.as_ref() {
                "sslmode" => {
                    sslmode = Some(v.into_owned());
                    None
                }
                "sslrootcert" => {
                    rootcert = Some(v.into_owned());
                    None
                }
                _ => Some((k.into_owned(), v.into_owned())),
            })
            .collect();
        if kept.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(kept);
        }
        return Ok((parsed.to_string(), sslmode, rootcert));
    }
    let kept: Vec<&str> = url
        .split_whitespace()
        .filter(|word| match word.split_once('=') {
            Some(("sslmode", v)) => {
                sslmode = Some(v.trim_matches('\'').to_owned());
                false
            }
            Some(("sslrootcert", v)) => {
                rootcert = Some(v.trim_matches('\'').to_owned());
                false
            }
            _ => true,
        })
        .collect();
    Ok((kept.join(" "), sslmode, rootcert))
}

fn client_config(mode: SslMode, rootcert: Option<&str>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => Arc::new(Lenient {
            provider,
            chain: None,
            pinned: Vec::new(),
            check_name: false,
        }),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let mut roots = rustls::RootCertStore::empty();
            let mut pinned = Vec::new();
            match rootcert {
                Some(path) => {
                    let certs = CertificateDer::pem_file_iter(path)
                        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                        .map_err(|e| format!("sslrootcert {path}: {e}"))?;
                    if certs.is_empty() {
                        return Err(format!("sslrootcert {path}: no PEM certificate in it"));
                    }
                    for cert in certs {
                        pinned.push(cert.clone().into_owned());
                        roots
                            .add(cert)
                            .map_err(|e| format!("sslrootcert {path}: {e}"))?;
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| format!("TLS: {e}"))?;
            Arc::new(Lenient {
                provider,
                chain: Some(webpki),
                pinned,
                check_name: mode == SslMode::VerifyFull,
            })
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// `prefer` / `require` (no chain check: libpq's meaning of them), `verify-ca` (the chain
/// must lead to a trusted root, the host name is not checked) and `verify-full` (the name
/// too). The handshake's signatures are checked either way.
#[derive(Debug)]
struct Lenient {
    provider: Arc<CryptoProvider>,
    /// The chain check; `None` for `prefer` / `require`.
    chain: Option<Arc<WebPkiServerVerifier>>,
    /// The certificates of `sslrootcert`: one of them presented as is is its own anchor.
    pinned: Vec<CertificateDer<'static>>,
    /// `verify-full`: the certificate must name the host.
    check_name: bool,
}

/// A refusal of the server's certificate, in words that say what was presented.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

fn refused(message: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        Refused(message),
    ))))
}

/// `CN=… (sha256 ab12…)`: which certificate this is.
fn describe(der: &[u8]) -> String {
    use sha2::Digest;
    let hash: String = sha2::Sha256::digest(der)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    match x509::common_name(der) {
        Some(cn) => format!("CN={cn} (sha256 {hash}…)"),
        None => format!("a certificate without a common name (sha256 {hash}…)"),
    }
}

/// Whether `der` names `host` as libpq checks it: its subject alternative names (DNS or IP)
/// when it has any, else its common name.
fn names_host(der: &CertificateDer<'_>, host: &ServerName<'_>) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(der) else {
        return false;
    };
    if cert.verify_is_valid_for_subject_name(host).is_ok() {
        return true;
    }
    let wanted = match host {
        ServerName::DnsName(name) => name.as_ref().to_ascii_lowercase(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        _ => return false,
    };
    !x509::has_subject_alt_names(der)
        && x509::common_name(der).is_some_and(|cn| cn.to_ascii_lowercase() == wanted)
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        let name_ok = || !self.check_name || names_host(end_entity, server_name);
        if self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            // Exactly a certificate the operator gave: trusted as is, as OpenSSL trusts a
            // self-signed anchor.
            return match name_ok() {
                true => Ok(ServerCertVerified::assertion()),
                false => Err(refused(format!(
                    "the server presented {}, which is the sslrootcert certificate but does not name {server_name:?}: use the host name it was issued for, or sslmode=verify-ca",
                    describe(end_entity)
                ))),
            };
        }
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            // (webpki's CaUsedAsEndEntity comes as `Other`: a self-signed one not given.)
            Err(rustls::Error::InvalidCertificate(e))
                if matches!(
                    e,
                    CertificateError::UnknownIssuer | CertificateError::BadSignature
                ) || format!("{e:?}").contains("CaUsedAsEndEntity") =>
            {
                let given: Vec<String> = self.pinned.iter().map(|p| describe(p)).collect();
                Err(refused(format!(
                    "the server presented {}, which is not signed by a certificate of sslrootcert{}: check sslrootcert",
                    describe(end_entity),
                    match given.is_empty() {
                        true => " (the web's roots)".to_owned(),
                        false => format!(" ({})", given.join(", ")),
                    }
                )))
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What a TLS failure means for the operator, added to the driver's own error.
pub fn hint(mode: SslMode, error: &str) -> Option<&'static str> {
    let e = error.to_ascii_lowercase();
    if e.contains("check sslrootcert") || e.contains("use the host name it was issued for") {
        None // the refusal says it already
    } else if e.contains("unknownissuer")
        || e.contains("unknown issuer")
        || e.contains("badsignature")
    {
        Some("the server's certificate is not signed by a trusted root: check sslrootcert")
    } else if e.contains("notvalidforname") || e.contains("not valid for name") {
        Some("the server's certificate does not name this host: use the host name it was issued for, or sslmode=verify-ca")
    } else if mode == SslMode::Disable && (e.contains("no encryption") || e.contains("pg_hba.conf"))
    {
        Some("sslmode=disable, and the server accepts only encrypted connections: use sslmode=require or verify-full")
    } else if e.contains("server does not support tls") {
        Some("the server does not offer TLS: use sslmode=prefer or disable, or turn ssl on in PostgreSQL")
    } else {
        None
    }
}

/// The two facts about a certificate this module reads that rustls does not expose: its
/// subject's common name, and whether it has subject alternative names. A small DER walk
/// over `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version?, serial,
/// signature, issuer, validity, subject, … } … }`.
mod x509 {
    /// `(tag, content, rest)` of the DER element at the start of `der`.
    fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = der.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (first as usize, rest)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | *b as usize);
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }

    /// The subject's first common name (OID 2.5.4.3).
    pub fn common_name(der: &[u8]) -> Option<String> {
        let (_, cert, _) = element(der)?;
        let (_, tbs, _) = element(cert)?;
        let mut rest = tbs;
        let (tag, _, after) = element(rest)?;
        if tag == 0xa0 {
            rest = after; // explicit version
        }
        // serial, signature, issuer, validity: then the subject.
        for _ in 0..4 {
            rest = element(rest)?.2;
        }
        let (_, mut subject, _) = element(rest)?;
        while let Some((_, set, after)) = element(subject) {
            subject = after;
            let (_, attribute, _) = element(set)?;
            let (_, oid, value) = element(attribute)?;
            if oid == [0x55, 0x04, 0x03] {
                let (_, text, _) = element(value)?;
                return String::from_utf8(text.to_vec()).ok();
            }
        }
        None
    }

    /// Whether the certificate has the subject alternative name extension (2.5.29.17).
    pub fn has_subject_alt_names(der: &[u8]) -> bool {
        der.windows(5).any(|w| w == [0x06, 0x03, 0x55, 0x1d, 0x11])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tls_words_are_taken_out_of_both_forms() {
        let (rest, mode, root) = split(
            "postgres://u:p@db:5432/app?sslmode=verify-full&sslrootcert=/ca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@db:5432/app?application_name=x");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/ca.pem"));
        let (rest, mode, _) = split("postgres://u@db/app?sslmode=require").unwrap();
        assert_eq!(rest, "postgres://u@db/app");
        assert_eq!(mode.as_deref(), Some("require"));
        let (rest, mode, root) =
            split("host=db user=u sslmode=verify-ca sslrootcert='/ca.pem' dbname=app").unwrap();
        assert_eq!(rest, "host=db user=u dbname=app");
        assert_eq!(mode.as_deref(), Some("verify-ca"));
        assert_eq!(root.as_deref(), Some("/ca.pem"));
    }

    #[test]
    fn modes_follow_libpq() {
        assert_eq!(
            parse("postgres://u@db/app").unwrap().1.mode,
            SslMode::Prefer
        );
        assert_eq!(
            parse("postgres://u@db/app?sslmode=disable").unwrap().1.mode,
            SslMode::Disable
        );
        let err = parse("postgres://u@db/app?sslmode=strict").err().unwrap();
        assert!(err.contains("sslmode 'strict' is not one of"), "{err}");
        let err = parse("postgres://u@db/app?sslmode=verify-full&sslrootcert=/nope.pem")
            .err()
            .unwrap();
        assert!(err.starts_with("sslrootcert /nope.pem:"), "{err}");
    }
}
