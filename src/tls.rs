//! TLS settings of `rediss://` connections: which CA to trust, which client
//! certificate to present (servers with `tls-auth-clients yes`), and whether
//! to skip the host name check.
//!
//! The PEM files are read and parsed when the [`Config`](crate::Config) is
//! built, so a missing file or a broken PEM fails there with the setting's
//! name, not at the first connect. The settings are applied to the one
//! `redis::Client` that the store builds, and so to every connection
//! redswarm opens: the pool, the pub/sub thread, the heartbeat, the BLPOP
//! waits of the swarm workers.
//!
//! Everything here compiles without the `tls` cargo feature too; then
//! [`TlsSettings::check`] refuses a `rediss://` URL and every TLS setting
//! with an error that names the feature.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// Where a PEM document comes from.
#[derive(Clone)]
pub(crate) enum PemSource {
    File(PathBuf),
    Inline(Vec<u8>),
}

impl PemSource {
    /// How the source is shown in `Debug` and in errors: the path, or only
    /// the fact that PEM was given (never its bytes).
    fn describe(&self) -> String {
        match self {
            PemSource::File(p) => format!("file {}", p.display()),
            PemSource::Inline(_) => "inline PEM".to_string(),
        }
    }

    fn load(&self, field: &'static str) -> Result<Vec<u8>> {
        match self {
            PemSource::Inline(b) => Ok(b.clone()),
            PemSource::File(p) => std::fs::read(p)
                .map_err(|e| Error::config(field, format!("cannot read {}: {e}", p.display()))),
        }
    }
}

/// The TLS part of a [`Config`](crate::Config), as the builder collected it.
#[derive(Clone, Default)]
pub(crate) struct TlsSettings {
    pub(crate) ca: Option<PemSource>,
    pub(crate) client: Option<(PemSource, PemSource)>,
    pub(crate) skip_hostname_check: bool,
    /// Filled by [`TlsSettings::check`]: the PEM bytes, read once.
    pub(crate) loaded: Option<LoadedTls>,
}

/// PEM bytes read from the sources (the key among them: never shown).
#[derive(Clone)]
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub(crate) struct LoadedTls {
    ca: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
}

/// Shows where each PEM comes from, never its content.
impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("ca", &self.ca.as_ref().map(PemSource::describe))
            .field(
                "client_cert",
                &self.client.as_ref().map(|(c, _)| c.describe()),
            )
            .field(
                "client_key",
                &self.client.as_ref().map(|(_, k)| match k {
                    PemSource::File(p) => format!("file {}", p.display()),
                    PemSource::Inline(_) => "***".to_string(),
                }),
            )
            .field("skip_hostname_check", &self.skip_hostname_check)
            .finish()
    }
}

/// True when the URL's scheme asks for TLS (`rediss://`, `valkeys://`,
/// `rediss+sentinel://`, `rediss+cluster://`).
pub(crate) fn url_wants_tls(url: &str) -> bool {
    let scheme = url.split("://").next().unwrap_or("");
    ["rediss", "valkeys", "rediss+sentinel", "rediss+cluster"]
        .iter()
        .any(|s| scheme.eq_ignore_ascii_case(s))
}

impl TlsSettings {
    fn any_setting(&self) -> Option<&'static str> {
        if self.ca.is_some() {
            Some("tls_ca")
        } else if self.client.is_some() {
            Some("tls_client_cert")
        } else if self.skip_hostname_check {
            Some("tls_skip_hostname_check")
        } else {
            None
        }
    }

    /// Validates the settings against the URL and reads the PEM files.
    /// Called by `ConfigBuilder::build`.
    pub(crate) fn check(&mut self, url: &str, masked_url: &str) -> Result<()> {
        let wants_tls = url_wants_tls(url);
        if !cfg!(feature = "tls") {
            if wants_tls {
                return Err(Error::config(
                    "url",
                    format!(
                        "{masked_url} asks for TLS, but redswarm was built without its `tls` cargo feature"
                    ),
                ));
            }
            if let Some(field) = self.any_setting() {
                return Err(Error::config(
                    field,
                    "TLS settings need redswarm's `tls` cargo feature, which this build lacks",
                ));
            }
            return Ok(());
        }
        let Some(field) = self.any_setting() else {
            return Ok(());
        };
        if !wants_tls {
            return Err(Error::config(
                field,
                format!("TLS settings need a rediss:// URL, not {masked_url}"),
            ));
        }
        if self.skip_hostname_check && self.ca.is_none() {
            return Err(Error::config(
                "tls_skip_hostname_check",
                "only allowed together with tls_ca: without a CA of your own, any certificate a public CA signed for any host would be accepted",
            ));
        }
        let ca = match &self.ca {
            Some(src) => {
                let pem = src.load("tls_ca")?;
                count_certificates(&pem, "tls_ca", src)?;
                Some(pem)
            }
            None => None,
        };
        let client = match &self.client {
            Some((cert_src, key_src)) => {
                let cert = cert_src.load("tls_client_cert")?;
                count_certificates(&cert, "tls_client_cert", cert_src)?;
                let key = key_src.load("tls_client_key")?;
                check_key(&key, key_src)?;
                Some((cert, key))
            }
            None => None,
        };
        self.loaded = Some(LoadedTls { ca, client });
        Ok(())
    }
}

#[cfg(feature = "tls")]
fn count_certificates(pem: &[u8], field: &'static str, src: &PemSource) -> Result<()> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut n = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        cert.map_err(|e| {
            Error::config(
                field,
                format!("{}: not a valid PEM certificate: {e}", src.describe()),
            )
        })?;
        n += 1;
    }
    if n == 0 {
        return Err(Error::config(
            field,
            format!(
                "{}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
                src.describe()
            ),
        ));
    }
    Ok(())
}

#[cfg(feature = "tls")]
fn check_key(pem: &[u8], src: &PemSource) -> Result<()> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::PrivateKeyDer;
    PrivateKeyDer::from_pem_slice(pem).map(|_| ()).map_err(|e| {
        Error::config(
            "tls_client_key",
            format!("{}: no usable PEM private key in it: {e}", src.describe()),
        )
    })
}

// Unreachable without the feature (`check` refuses every setting first).
#[cfg(not(feature = "tls"))]
fn count_certificates(_: &[u8], _: &'static str, _: &PemSource) -> Result<()> {
    Ok(())
}

#[cfg(not(feature = "tls"))]
fn check_key(_: &[u8], _: &PemSource) -> Result<()> {
    Ok(())
}

/// The loaded CA and client certificate as redis-rs takes them.
#[cfg(feature = "tls")]
fn certificates(loaded: &LoadedTls) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: loaded
            .client
            .as_ref()
            .map(|(cert, key)| redis::ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
        root_cert: loaded.ca.clone(),
    }
}

/// Builds the client every redswarm connection comes from, with the TLS
/// settings applied (a plain `redis::Client` when there are none).
pub(crate) fn client(
    info: redis::ConnectionInfo,
    settings: &TlsSettings,
) -> redis::RedisResult<redis::Client> {
    #[cfg(feature = "tls")]
    {
        if let redis::ConnectionAddr::TcpTls { .. } = info.addr() {
            // rustls needs a process-wide crypto provider; installing twice is harmless.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        if let Some(loaded) = &settings.loaded {
            let client = redis::Client::build_with_tls(info, certificates(loaded))?;
            if !settings.skip_hostname_check {
                return Ok(client);
            }
            let mut addr = client.get_connection_info().addr().clone();
            addr.set_danger_accept_invalid_hostnames(true);
            let info = client.get_connection_info().clone().set_addr(addr);
            return redis::Client::open(info);
        }
    }
    // Without the feature `check` has refused TLS settings already.
    let _ = settings;
    redis::Client::open(info)
}

/// Applies the TLS settings to a cluster client: a `rediss+cluster://`
/// URL turns TLS on for every node, with the configured CA, client
/// certificate and hostname check.
#[cfg(feature = "cluster")]
pub(crate) fn cluster_tls(
    builder: redis::cluster::ClusterClientBuilder,
    template: &redis::ConnectionInfo,
    settings: &TlsSettings,
) -> redis::RedisResult<redis::cluster::ClusterClientBuilder> {
    #[cfg(feature = "tls")]
    {
        if let redis::ConnectionAddr::TcpTls { .. } = template.addr() {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let mut builder = builder.tls(redis::TlsMode::Secure);
            if let Some(loaded) = &settings.loaded {
                builder = builder.certs(certificates(loaded));
            }
            return Ok(builder.danger_accept_invalid_hostnames(settings.skip_hostname_check));
        }
    }
    // Without the feature `check` has refused TLS settings already.
    let _ = (template, settings);
    Ok(builder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_schemes_are_recognised() {
        assert!(url_wants_tls("rediss://h:1/"));
        assert!(url_wants_tls("REDISS://h/"));
        assert!(url_wants_tls("valkeys://h/"));
        assert!(!url_wants_tls("redis://h/"));
        assert!(!url_wants_tls("redis+unix:///tmp/s"));
        assert!(!url_wants_tls("garbage"));
    }

    #[test]
    fn settings_without_a_tls_url_are_refused_by_name() {
        let mut s = TlsSettings {
            ca: Some(PemSource::Inline(b"x".to_vec())),
            ..TlsSettings::default()
        };
        let err = s.check("redis://h/", "redis://h/").unwrap_err();
        let want = if cfg!(feature = "tls") {
            "rediss://"
        } else {
            "`tls` cargo feature"
        };
        assert!(err.to_string().contains("tls_ca"), "{err}");
        assert!(err.to_string().contains(want), "{err}");
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn a_tls_url_without_the_feature_names_the_feature() {
        let err = crate::Config::from_url("rediss://h:6380/").unwrap_err();
        assert!(
            matches!(&err, Error::InvalidConfig { field: "url", reason } if reason.contains("`tls` cargo feature")),
            "{err}"
        );
    }

    #[cfg(feature = "tls")]
    #[test]
    fn broken_pem_is_refused_with_the_setting_name() {
        let mut s = TlsSettings {
            ca: Some(PemSource::Inline(b"not a certificate".to_vec())),
            ..TlsSettings::default()
        };
        let err = s
            .check("rediss://h/", "rediss://h/")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tls_ca") && err.contains("no PEM certificate"),
            "{err}"
        );

        let mut s = TlsSettings {
            ca: Some(PemSource::File("/nonexistent/redswarm-ca.pem".into())),
            ..TlsSettings::default()
        };
        let err = s
            .check("rediss://h/", "rediss://h/")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot read /nonexistent/redswarm-ca.pem"),
            "{err}"
        );

        let mut s = TlsSettings {
            skip_hostname_check: true,
            ..TlsSettings::default()
        };
        let err = s
            .check("rediss://h/", "rediss://h/")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls_skip_hostname_check"), "{err}");
    }

    #[test]
    fn debug_never_shows_an_inline_key() {
        let s = TlsSettings {
            client: Some((
                PemSource::Inline(b"CERTBYTES".to_vec()),
                PemSource::Inline(b"SECRETKEY".to_vec()),
            )),
            ..TlsSettings::default()
        };
        let text = format!("{s:?}");
        assert!(
            !text.contains("SECRETKEY") && !text.contains("CERTBYTES"),
            "{text}"
        );
    }
}
