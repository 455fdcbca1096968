//! `veil keygen`: a deployment's TLS material. One CA, and for each role (client, server,
//! dealer) a certificate signed by it for the given host names and addresses, usable both to
//! accept connections and to make them (server and client authentication), naming its role
//! (`urn:veil:role:<role>`, see [`super::role`]) so that no role can act as another.

use super::role::Role;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The roles that get a certificate.
pub const ROLES: [&str; 3] = ["client", "server", "dealer"];

/// PEM texts of a deployment's CA and role certificates.
pub struct KeySet {
    /// The CA certificate every role trusts.
    pub ca_cert: String,
    /// The CA's private key (keep offline: it can mint certificates).
    pub ca_key: String,
    /// Per role: name, certificate, private key.
    pub roles: Vec<(String, String, String)>,
}

/// Generates a CA and one certificate per role for `names` (DNS names or IP addresses the
/// peers will dial; each certificate carries all of them).
pub fn generate(names: &[String]) -> Result<KeySet, String> {
    if names.is_empty() {
        return Err("give at least one host name or address for the certificates".into());
    }
    let e = |e: rcgen::Error| format!("generating certificates: {e}");
    let ca_key = KeyPair::generate().map_err(e)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "veil deployment CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
    let ca_pem = (ca_cert.pem(), ca_key.serialize_pem());
    let issuer = Issuer::new(ca, ca_key);
    let mut roles = Vec::new();
    for role in ROLES {
        let key = KeyPair::generate().map_err(e)?;
        let mut p = CertificateParams::new(names.to_vec())
            .map_err(|err| format!("`{}`: {err}", names.join(", ")))?;
        p.distinguished_name.push(DnType::CommonName, format!("veil {role}"));
        let r = Role::from_name(role).expect("a role name");
        p.subject_alt_names.push(SanType::URI(r.uri().try_into().map_err(e)?));
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &issuer).map_err(e)?;
        roles.push((role.to_string(), cert.pem(), key.serialize_pem()));
    }
    Ok(KeySet { ca_cert: ca_pem.0, ca_key: ca_pem.1, roles })
}

impl KeySet {
    /// The TLS configuration of `role` from this set.
    pub fn config(&self, role: &str) -> Option<super::tls::TlsConfig> {
        let (_, cert, key) = self.roles.iter().find(|r| r.0 == role)?;
        super::tls::TlsConfig::from_pem(cert.as_bytes(), key.as_bytes(), self.ca_cert.as_bytes())
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::tls::TlsConfig;

    #[test]
    fn every_role_gets_a_usable_identity_and_bad_pem_is_named() {
        let k = generate(&["127.0.0.1".into(), "veil.example".into()]).unwrap();
        for role in ROLES {
            let c = k.config(role).expect(role);
            assert_eq!(c.role.name(), role);
        }
        let (_, cert, key) = &k.roles[0];
        let (_, _, other_key) = &k.roles[1];
        let ca = k.ca_cert.as_bytes();
        // Which input is wrong: 0 the certificate, 1 the key, 2 the CA.
        let which =
            |c: &[u8], kk: &[u8], a: &[u8]| TlsConfig::from_pem(c, kk, a).err().map(|e| e.0);
        assert_eq!(which(b"junk", key.as_bytes(), ca), Some(0));
        assert_eq!(which(cert.as_bytes(), b"junk", ca), Some(1));
        assert_eq!(which(cert.as_bytes(), other_key.as_bytes(), ca), Some(1));
        assert_eq!(which(cert.as_bytes(), key.as_bytes(), b""), Some(2));
        assert!(generate(&[]).is_err());
    }
}
