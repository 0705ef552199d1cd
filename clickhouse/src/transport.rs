//! How the adapter reaches ClickHouse's HTTP interface: `http://`, or `https://` trusting the
//! system's roots (the crate's own client), or trusting only the CA bundle `ca_file` names
//! (a private CA, as self-hosted clusters use). Credentials go as ClickHouse's
//! `X-ClickHouse-User` / `X-ClickHouse-Key` headers.

use std::sync::Arc;
use std::time::Duration;

use chorus_store::history::HistoryError;
use clickhouse::Client;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::ClickHouseConfig;

/// As the crate's own client: keep connections alive, and drop idle ones before ClickHouse
/// does (it closes them after 3 s).
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// The client of the server at `config.url` (no database chosen), with its credentials.
pub(crate) fn server(config: &ClickHouseConfig) -> Result<Client, HistoryError> {
    let mut server = match config.ca_file.is_empty() {
        true => Client::default(),
        false => {
            let connector = trusting(&config.ca_file)?;
            Client::with_http_client(
                HyperClient::builder(TokioExecutor::new())
                    .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                    .build(connector),
            )
        }
    }
    .with_url(&config.url);
    if !config.user.is_empty() {
        server = server.with_user(&config.user);
    }
    if !config.password.is_empty() {
        server = server.with_password(&config.password);
    }
    Ok(server)
}

/// A connector (`http://` or `https://`) that trusts the certificates of `ca_file` (PEM) and no
/// others.
fn trusting(ca_file: &str) -> Result<hyper_rustls::HttpsConnector<HttpConnector>, HistoryError> {
    let unusable = |error: &dyn std::fmt::Display| {
        HistoryError::Storage(format!("clickhouse.ca_file {ca_file}: {error}").into())
    };
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(ca_file).map_err(|error| unusable(&error))? {
        roots
            .add(certificate.map_err(|error| unusable(&error))?)
            .map_err(|error| unusable(&error))?;
    }
    if roots.is_empty() {
        return Err(unusable(&"no certificate in the file"));
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|error| unusable(&error))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.set_keepalive(Some(TCP_KEEPALIVE));
    http.enforce_http(false);
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}
