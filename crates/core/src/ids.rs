//! Identifier newtypes, parsed at the edge.
//!
//! Every external string that names something becomes one of these types before it
//! crosses a port, so a raw `String` never reaches the runtime or the store. The
//! constructors are the only place the naming rules live.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Why an identifier was refused. Each variant names the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The text breaks the naming rule of `field`.
    #[error("{field} {value:?} is invalid: {rule}")]
    Invalid {
        /// Which kind of name was being parsed (`workspace name`, `session name`, ...).
        field: &'static str,
        /// The refused text, truncated to 80 characters.
        value: String,
        /// The rule it breaks, as a sentence fragment.
        rule: &'static str,
    },
}

fn invalid(field: &'static str, value: &str, rule: &'static str) -> IdError {
    IdError::Invalid {
        field,
        value: value.chars().take(80).collect(),
        rule,
    }
}

/// The naming rule shared by workspace and session names: a DNS label.
///
/// 1 to 63 characters of `[a-z0-9-]`, starting with a letter and not ending with `-`.
/// The rule is deliberately strict: names end up in tmux targets, container names,
/// labels and URLs, and a DNS label is safe in all of them.
fn check_label(field: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() || value.len() > 63 {
        return Err(invalid(field, value, "must be 1 to 63 characters long"));
    }
    let bytes = value.as_bytes();
    if !bytes[0].is_ascii_lowercase() {
        return Err(invalid(field, value, "must start with a lowercase letter"));
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
    {
        return Err(invalid(field, value, "may hold only a-z, 0-9 and '-'"));
    }
    if bytes[bytes.len() - 1] == b'-' {
        return Err(invalid(field, value, "must not end with '-'"));
    }
    Ok(())
}

macro_rules! label_newtype {
    ($(#[$doc:meta])* $name:ident, $field:literal, $edge:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses `value`, refusing anything that breaks the naming rule.
            ///
            /// # Errors
            /// [`IdError::Invalid`] naming the rule that was broken.
            pub fn parse(value: &str) -> Result<Self, IdError> {
                check_label($field, value)?;
                $edge(value)?;
                Ok(Self(value.to_owned()))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                check_label($field, &value)?;
                Ok(Self(value))
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}

/// A workspace name must not look like a workspace id: `{id}` in a path accepts either,
/// and a name shaped like an id could never be reached by name (or would shadow
/// another workspace's id). Checked at the edge ([`WorkspaceName::parse`]); rows stored
/// before the rule still load.
fn not_an_id(value: &str) -> Result<(), IdError> {
    if check_prefixed_hex("workspace id", "ws-", 16, value).is_ok() {
        return Err(invalid(
            "workspace name",
            value,
            "must not look like a workspace id (ws- and 16 hex digits)",
        ));
    }
    Ok(())
}

fn any_label(_: &str) -> Result<(), IdError> {
    Ok(())
}

label_newtype!(
    /// A workspace's human name, unique among live workspaces. See [`check_label`] for the
    /// rule; a name shaped like a workspace id is refused too.
    WorkspaceName,
    "workspace name",
    not_an_id
);
impl WorkspaceName {
    /// A fresh name for a member of the warm pool `pool`: `<pool>-<8 hex digits>`. The
    /// pool's name is at most [`crate::model::Pool::MAX_NAME`] characters, so the result
    /// is a valid name; a longer one is cut to fit.
    pub fn pool_member(pool: &WorkspaceName) -> WorkspaceName {
        let stem = pool.as_str();
        let stem = stem[..stem.len().min(54)].trim_end_matches('-');
        Self(format!("{stem}-{}", hex(&random_bytes::<4>())))
    }
}

label_newtype!(
    /// The name of a session inside a workspace, unique within it. Same rule as [`WorkspaceName`].
    SessionName,
    "session name",
    any_label
);

/// Fills `out` with random bytes from the operating system's CSPRNG.
///
/// Failure here means the OS cannot produce randomness at all; nothing sensible can
/// continue (tokens would be guessable), so it is the one place the core panics.
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut out).expect("the operating system's random source is unavailable");
    out
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

fn check_prefixed_hex(
    field: &'static str,
    prefix: &str,
    hex_len: usize,
    value: &str,
) -> Result<(), IdError> {
    let Some(rest) = value.strip_prefix(prefix) else {
        return Err(invalid(field, value, "has the wrong prefix"));
    };
    if rest.len() != hex_len
        || !rest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(invalid(
            field,
            value,
            "must be the prefix followed by lowercase hex digits",
        ));
    }
    Ok(())
}

macro_rules! random_id {
    ($(#[$doc:meta])* $name:ident, $field:literal, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// A fresh random id (`
            #[doc = $prefix]
            /// ` followed by 16 hex digits).
            pub fn generate() -> Self {
                Self(format!("{}{}", $prefix, hex(&random_bytes::<8>())))
            }

            /// Parses an id received from outside.
            ///
            /// # Errors
            /// [`IdError::Invalid`] when the text is not a well-formed id of this kind.
            pub fn parse(value: &str) -> Result<Self, IdError> {
                check_prefixed_hex($field, $prefix, 16, value)?;
                Ok(Self(value.to_owned()))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                check_prefixed_hex($field, $prefix, 16, &value)?;
                Ok(Self(value))
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

random_id!(
    /// A workspace's stable id: `ws-` and 16 hex digits. Runtime resource names derive from it.
    WorkspaceId,
    "workspace id",
    "ws-"
);
random_id!(
    /// An operation's id: `op-` and 16 hex digits.
    OpId,
    "operation id",
    "op-"
);
random_id!(
    /// The engine instance id, generated once per data directory: `en-` and 16 hex digits.
    /// Every runtime resource the engine creates carries it.
    EngineId,
    "engine id",
    "en-"
);

/// The fencing counter of a workspace, incremented by every real start.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Incarnation(pub u64);

impl Incarnation {
    /// The incarnation a real start mints.
    #[must_use]
    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The creation generation of a session row: a store-assigned number, unique per
/// store, that tells a re-created session apart from the one that exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Generation(pub u64);

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Which runtime runs a workspace (`tmux`, `docker`, `fake`, ...): 1 to 32 of `[a-z0-9-]`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RuntimeKind(String);

impl RuntimeKind {
    /// Parses a runtime name.
    ///
    /// # Errors
    /// [`IdError::Invalid`] for an empty, long or non `[a-z0-9-]` name.
    pub fn parse(value: &str) -> Result<Self, IdError> {
        if value.is_empty() || value.len() > 32 {
            return Err(invalid("runtime", value, "must be 1 to 32 characters long"));
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(invalid("runtime", value, "may hold only a-z, 0-9 and '-'"));
        }
        Ok(Self(value.to_owned()))
    }

    /// The runtime name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RuntimeKind {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, IdError> {
        Self::parse(&value)
    }
}

impl From<RuntimeKind> for String {
    fn from(value: RuntimeKind) -> String {
        value.0
    }
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A workspace's bearer token: 256 random bits, handed to the workspace process once
/// and never stored. Its `Debug` and `Display` never print the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct WorkspaceToken(String);

impl WorkspaceToken {
    /// Mints a fresh token (`bwt_` and 64 hex digits).
    pub fn mint() -> Self {
        Self(format!("bwt_{}", hex(&random_bytes::<32>())))
    }

    /// Wraps a token presented by a client. No validation: an ill-formed token simply
    /// never verifies.
    pub fn from_presented(value: &str) -> Self {
        Self(value.to_owned())
    }

    /// The secret, for handing to the workspace process. Do not log it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// The hash the store keeps instead of the token.
    pub fn hash(&self) -> TokenHash {
        let digest = Sha256::digest(self.0.as_bytes());
        TokenHash(digest.into())
    }
}

impl fmt::Debug for WorkspaceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WorkspaceToken(<redacted>)")
    }
}

/// SHA-256 of a [`WorkspaceToken`]. Compared in constant time.
#[derive(Clone, Copy, Eq, Serialize, Deserialize)]
pub struct TokenHash(pub [u8; 32]);

impl PartialEq for TokenHash {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl TokenHash {
    /// Lowercase hex of the hash, for storage.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses the hex form written by [`TokenHash::to_hex`].
    pub fn from_hex(value: &str) -> Option<Self> {
        if value.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, chunk) in value.as_bytes().chunks(2).enumerate() {
            let s = std::str::from_utf8(chunk).ok()?;
            out[i] = u8::from_str_radix(s, 16).ok()?;
        }
        Some(Self(out))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({}…)", &self.to_hex()[..8])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_names_follow_the_dns_label_rule() {
        for ok in ["a", "api-7", "a1-b2", &"a".repeat(63)] {
            assert!(WorkspaceName::parse(ok).is_ok(), "{ok} should parse");
        }
        for bad in [
            "",
            "7api",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "a b",
            "a;b",
            "é",
            "$(x)",
            &"a".repeat(64),
            "ws-0123456789abcdef",
        ] {
            assert!(
                WorkspaceName::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn a_name_shaped_like_a_workspace_id_is_refused_but_near_misses_are_names() {
        let id = WorkspaceId::generate();
        let err = WorkspaceName::parse(id.as_str()).unwrap_err();
        assert!(
            err.to_string()
                .contains("must not look like a workspace id"),
            "{err}"
        );
        for ok in ["ws-0123456789abcde", "ws-0123456789abcdef0", "ws-build"] {
            assert!(WorkspaceName::parse(ok).is_ok(), "{ok} should parse");
        }
        assert!(
            SessionName::parse(id.as_str()).is_ok(),
            "session names are not looked up by id"
        );
    }

    #[test]
    fn ids_round_trip_and_refuse_foreign_text() {
        let id = WorkspaceId::generate();
        assert_eq!(WorkspaceId::parse(id.as_str()).unwrap(), id);
        assert!(WorkspaceId::parse("ws-../../etc").is_err());
        assert!(WorkspaceId::parse(OpId::generate().as_str()).is_err());
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<WorkspaceId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<WorkspaceId>("\"nope\"").is_err());
    }

    #[test]
    fn token_debug_never_prints_the_secret() {
        let token = WorkspaceToken::mint();
        assert_eq!(token.expose_secret().len(), 4 + 64);
        let printed = format!("{token:?}");
        assert!(!printed.contains(&token.expose_secret()[4..]));
        assert_ne!(WorkspaceToken::mint(), token);
    }

    #[test]
    fn token_hash_round_trips_through_hex() {
        let hash = WorkspaceToken::mint().hash();
        assert_eq!(TokenHash::from_hex(&hash.to_hex()), Some(hash));
        assert_eq!(TokenHash::from_hex("zz"), None);
        assert_ne!(WorkspaceToken::mint().hash(), hash);
    }
}
