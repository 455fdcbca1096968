//! The three roles of a deployment, and how a certificate says which one it belongs to.
//!
//! `veil keygen` writes the role into each certificate as a subject-alternative-name URI
//! `urn:veil:role:<role>`; after every TLS handshake each side reads the peer's and refuses a
//! peer whose certificate belongs to another role than the one it claims or is expected to
//! be. So a key stolen from (or lent by) the server cannot pose as the dealer.

/// Who is on one end of a connection.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The party that owns the input.
    Client,
    /// The party that owns the weights.
    Server,
    /// The correlated-randomness dealer.
    Dealer,
}

/// Every role, in code order.
pub const ROLES: [Role; 3] = [Role::Client, Role::Server, Role::Dealer];

/// The URI prefix of a role in a certificate's subject alternative names.
pub const ROLE_URI: &str = "urn:veil:role:";

impl Role {
    /// The byte that stands for it on the wire.
    pub fn code(self) -> u8 {
        match self {
            Role::Client => 0,
            Role::Server => 1,
            Role::Dealer => 2,
        }
    }

    /// The role of a wire byte.
    pub fn from_code(c: u8) -> Option<Role> {
        ROLES.into_iter().find(|r| r.code() == c)
    }

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
            Role::Dealer => "dealer",
        }
    }

    /// The role of a lowercase name.
    pub fn from_name(s: &str) -> Option<Role> {
        ROLES.into_iter().find(|r| r.name() == s)
    }

    /// The URI a certificate of this role carries.
    pub fn uri(self) -> String {
        format!("{ROLE_URI}{}", self.name())
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The role a certificate's subject alternative names give: exactly one `urn:veil:role:…`
/// URI naming a known role; anything else is an error that says what was found.
pub fn of_uris<'a>(uris: impl Iterator<Item = &'a str>) -> Result<Role, String> {
    let found: Vec<&str> = uris.filter(|u| u.starts_with(ROLE_URI)).collect();
    match found.as_slice() {
        [] => Err(format!(
            "the certificate names no veil role (a subjectAltName URI {ROLE_URI}client, \
             …server or …dealer): make it with `veil keygen`, or add the URI when your CA signs it"
        )),
        [one] => Role::from_name(&one[ROLE_URI.len()..])
            .ok_or_else(|| format!("the certificate names an unknown role `{one}`")),
        many => Err(format!("the certificate names several roles ({})", many.join(", "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_known_role_uri_is_a_role() {
        assert_eq!(of_uris(["urn:veil:role:dealer"].into_iter()), Ok(Role::Dealer));
        assert_eq!(of_uris(["https://x", "urn:veil:role:client"].into_iter()), Ok(Role::Client));
        assert!(of_uris(std::iter::empty()).unwrap_err().contains("names no veil role"));
        assert!(of_uris(["urn:veil:role:admin"].into_iter()).unwrap_err().contains("unknown"));
        let two = of_uris(["urn:veil:role:client", "urn:veil:role:server"].into_iter());
        assert!(two.unwrap_err().contains("several roles"));
        for r in ROLES {
            assert_eq!(Role::from_code(r.code()), Some(r));
            assert_eq!(Role::from_name(r.name()), Some(r));
        }
    }
}
