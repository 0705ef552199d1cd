//! Certificates made by a test: its own certificate authority and server certificates for
//! `localhost` and `127.0.0.1` signed by it (nodes serving `[http]` TLS).

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::CertificateDer;

/// A test's certificate authority.
pub fn authority() -> anyhow::Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Chorus test CA");
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

/// A server certificate for `localhost` and `127.0.0.1` signed by `authority`: (chain PEM, key
/// PEM, leaf DER).
pub fn server_certificate(
    authority: &CertifiedIssuer<'static, KeyPair>,
) -> anyhow::Result<(String, String, CertificateDer<'static>)> {
    let key = KeyPair::generate()?;
    let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    let certificate = params.signed_by(&key, authority)?;
    Ok((
        certificate.pem(),
        key.serialize_pem(),
        certificate.der().clone(),
    ))
}

/// A new authority and a server certificate it signed, written as PEM files in `dir`: (CA file,
/// certificate file, key file).
pub fn certificate_files(dir: &std::path::Path) -> anyhow::Result<[String; 3]> {
    let authority = authority()?;
    let (certificate, key, _) = server_certificate(&authority)?;
    let mut paths = Vec::new();
    for (name, pem) in [
        ("ca.pem", authority.pem()),
        ("cert.pem", certificate),
        ("key.pem", key),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, pem)?;
        paths.push(path.display().to_string());
    }
    Ok([paths[0].clone(), paths[1].clone(), paths[2].clone()])
}
