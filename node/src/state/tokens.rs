//! API tokens, as replicated state: who may write (and, where the node asks for it,
//! read). Only a SHA-256 hash of each secret is ever replicated — the secret itself is
//! made by the node that takes the create request, returned once, and never enters the
//! Raft log, a snapshot or a disk (`crate::server::auth` makes and checks them).
//!
//! While no token exists the API is open (a fresh cluster works without setup); the
//! first token must be an admin token, and the last admin token cannot be revoked, so a
//! cluster can never lock its operators out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::command::{DomainError, Reply, Response};

/// At most this many tokens.
pub const MAX_TOKENS: usize = 1024;
/// The longest token name.
pub const MAX_NAME: usize = 64;

/// What a token may do. Each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Reads only.
    ReadOnly,
    /// Reads, and changes apps, instances, deployments, allocations, webhooks and
    /// registers (what a deploy pipeline does).
    Deploy,
    /// Everything: tokens, membership, pools, hosts (drain), snapshots.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ReadOnly => "read-only",
            Role::Deploy => "deploy",
            Role::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Token {
    /// The public part of the token (`berth_<id>_<secret>`), shown in lists.
    pub id: String,
    pub name: String,
    pub role: Role,
    /// SHA-256 of the secret part, hex.
    pub hash: String,
    /// When it was created (replicated clock, ms; set in apply).
    pub created_at: u64,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Tokens {
    pub tokens: BTreeMap<String, Token>,
}

/// Checks a token's name; the error names what is wrong.
pub fn validate_name(name: &str) -> Result<(), DomainError> {
    if name.is_empty() || name.len() > MAX_NAME || !name.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(DomainError::invalid(
            "invalid_request",
            format!("name {name:?}: 1 to {MAX_NAME} printable ASCII characters"),
        ));
    }
    Ok(())
}

impl Tokens {
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&Token> {
        self.tokens.get(id)
    }

    /// Adds `token`, created at `now` (the replicated clock).
    pub fn create(&mut self, mut token: Token, now: u64) -> Response {
        token.created_at = now;
        if let Err(e) = validate_name(&token.name) {
            return Response(Err(e));
        }
        if self.tokens.is_empty() && token.role != Role::Admin {
            return Response(Err(DomainError::conflict(
                "first_token_must_be_admin",
                format!(
                    "the first token must have role admin (this one is {}): once a token exists, \
                     only an admin token can create more",
                    token.role.as_str()
                ),
            )));
        }
        if self.tokens.len() >= MAX_TOKENS {
            return Response(Err(DomainError::conflict(
                "too_many_tokens",
                format!("at most {MAX_TOKENS} tokens; revoke one first"),
            )));
        }
        if self.tokens.contains_key(&token.id) {
            return Response(Err(DomainError::conflict("token_exists", format!("token {} exists", token.id))));
        }
        self.tokens.insert(token.id.clone(), token.clone());
        Response(Ok(Reply::Token(token)))
    }

    pub fn revoke(&mut self, id: &str) -> Response {
        let Some(token) = self.tokens.get(id) else {
            return Response(Err(DomainError::not_found("token_not_found", format!("no token {id}"))));
        };
        let admins = self.tokens.values().filter(|t| t.role == Role::Admin).count();
        if token.role == Role::Admin && admins == 1 && self.tokens.len() > 1 {
            return Response(Err(DomainError::conflict(
                "last_admin_token",
                format!(
                    "{id} is the last admin token and other tokens exist: nobody could manage them; \
                     create another admin token first, or revoke the others"
                ),
            )));
        }
        let token = self.tokens.remove(id).expect("checked above");
        Response(Ok(Reply::Token(token)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(id: &str, role: Role) -> Token {
        Token { id: id.into(), name: format!("t-{id}"), role, hash: "00".into(), created_at: 1 }
    }

    fn code(r: Response) -> String {
        r.0.unwrap_err().code
    }

    #[test]
    fn the_first_token_is_an_admin_and_the_last_admin_stays() {
        let mut t = Tokens::default();
        assert_eq!(code(t.create(token("a", Role::Deploy), 1)), "first_token_must_be_admin");
        assert!(t.create(token("a", Role::Admin), 1).0.is_ok());
        assert_eq!(code(t.create(token("a", Role::Deploy), 1)), "token_exists");
        assert!(t.create(token("b", Role::Deploy), 1).0.is_ok());
        assert_eq!(code(t.revoke("a")), "last_admin_token");
        assert!(t.create(token("c", Role::Admin), 1).0.is_ok());
        assert!(t.revoke("a").0.is_ok());
        assert!(t.revoke("b").0.is_ok());
        // The only token left may go: the cluster is open again, as before the first.
        assert!(t.revoke("c").0.is_ok());
        assert!(t.is_empty());
        assert_eq!(code(t.revoke("c")), "token_not_found");
    }

    #[test]
    fn names_are_checked() {
        let mut t = Tokens::default();
        let mut bad = token("a", Role::Admin);
        bad.name = "x\ny".into();
        assert_eq!(code(t.create(bad, 1)), "invalid_request");
        assert!(Role::Admin > Role::Deploy && Role::Deploy > Role::ReadOnly);
        assert_eq!(serde_json::to_string(&Role::ReadOnly).unwrap(), "\"read-only\"");
    }
}
