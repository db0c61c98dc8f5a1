//! Hostids: `TYPE:VALUE`, e.g. `ethernet:00163E5A1B2C`, `string:lls-berlin-1`, `uuid:…`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The kind of a hostid. A failover pair's two hostids must be of the same kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostIdType {
    Ethernet,
    String,
    Uuid,
}

impl HostIdType {
    pub fn as_str(self) -> &'static str {
        match self {
            HostIdType::Ethernet => "ethernet",
            HostIdType::String => "string",
            HostIdType::Uuid => "uuid",
        }
    }
}

impl fmt::Display for HostIdType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed hostid in canonical form.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostId {
    kind: HostIdType,
    value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostIdError {
    #[error("a hostid is written TYPE:VALUE, e.g. ethernet:00163E5A1B2C")]
    MissingType,
    #[error("unknown hostid type `{0}`; use ethernet, string or uuid")]
    UnknownType(String),
    #[error("an ethernet hostid is 12 hex digits, optionally separated by `:` or `-`")]
    BadEthernet,
    #[error("a uuid hostid must be a UUID such as uuid:67e55044-10b1-426f-9247-bb680e5fe0c8")]
    BadUuid,
    #[error("a string hostid is 1 to 64 characters of letters, digits, `.`, `_` and `-`")]
    BadString,
}

impl HostId {
    pub fn parse(input: &str) -> Result<Self, HostIdError> {
        let input = input.trim();
        let (kind, value) = input.split_once(':').ok_or(HostIdError::MissingType)?;
        match kind.to_ascii_lowercase().as_str() {
            "ethernet" => {
                let digits: String = value.chars().filter(|c| *c != ':' && *c != '-').collect();
                if digits.len() != 12 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(HostIdError::BadEthernet);
                }
                // Separators must be regular if present: 6 groups of 2.
                if digits.len() != value.len() {
                    let groups: Vec<&str> = value.split([':', '-']).collect();
                    if groups.len() != 6 || groups.iter().any(|g| g.len() != 2) {
                        return Err(HostIdError::BadEthernet);
                    }
                }
                Ok(HostId {
                    kind: HostIdType::Ethernet,
                    value: digits.to_ascii_uppercase(),
                })
            }
            "string" => {
                let ok = !value.is_empty()
                    && value.len() <= 64
                    && value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
                if !ok {
                    return Err(HostIdError::BadString);
                }
                Ok(HostId {
                    kind: HostIdType::String,
                    value: value.to_owned(),
                })
            }
            "uuid" => {
                let id = uuid::Uuid::parse_str(value).map_err(|_| HostIdError::BadUuid)?;
                Ok(HostId {
                    kind: HostIdType::Uuid,
                    value: id.hyphenated().to_string(),
                })
            }
            other => Err(HostIdError::UnknownType(other.chars().take(32).collect())),
        }
    }

    pub fn kind(&self) -> HostIdType {
        self.kind
    }

    pub fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

impl FromStr for HostId {
    type Err = HostIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HostId::parse(s)
    }
}

impl Serialize for HostId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HostId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HostId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// In OpenAPI documents a hostid is a string `TYPE:VALUE`.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for HostId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "A hostid, `TYPE:VALUE`: `ethernet:` and 12 hex digits (with or without `:` or \
                 `-` separators; answered as 12 upper-case digits), `string:` and 1 to 64 \
                 letters, digits, `.`, `_` or `-`, or `uuid:` and a UUID.",
            ))
            .pattern(Some(r"^[A-Za-z]+:\S{1,64}$"))
            .max_length(Some(80))
            .examples([
                serde_json::json!("ethernet:00163E5A1B2C"),
                serde_json::json!("string:lls-berlin-1"),
            ])
            .build()
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for HostId {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ethernet_is_canonicalised() {
        for input in [
            "ethernet:00163e5a1b2c",
            "ethernet:00:16:3E:5A:1B:2C",
            "ETHERNET:00-16-3e-5a-1b-2c",
        ] {
            let id = HostId::parse(input).unwrap();
            assert_eq!(id.to_string(), "ethernet:00163E5A1B2C");
            assert_eq!(id.kind(), HostIdType::Ethernet);
        }
    }

    #[test]
    fn bad_hostids_are_refused() {
        assert_eq!(HostId::parse("00163E5A1B2C"), Err(HostIdError::MissingType));
        assert_eq!(
            HostId::parse("ethernet:00163E5A1B"),
            Err(HostIdError::BadEthernet)
        );
        assert_eq!(
            HostId::parse("ethernet:0016:3E5A1B2C"),
            Err(HostIdError::BadEthernet)
        );
        assert_eq!(
            HostId::parse("ethernet:00163E5A1B2G"),
            Err(HostIdError::BadEthernet)
        );
        assert_eq!(HostId::parse("string:"), Err(HostIdError::BadString));
        assert_eq!(HostId::parse("string:a b"), Err(HostIdError::BadString));
        assert_eq!(HostId::parse("uuid:nope"), Err(HostIdError::BadUuid));
        assert!(matches!(
            HostId::parse("disk:1234"),
            Err(HostIdError::UnknownType(_))
        ));
    }

    #[test]
    fn string_and_uuid_round_trip() {
        let s = HostId::parse("string:lls-berlin-1").unwrap();
        assert_eq!(s.to_string(), "string:lls-berlin-1");
        let u = HostId::parse("uuid:67E55044-10B1-426F-9247-BB680E5FE0C8").unwrap();
        assert_eq!(u.to_string(), "uuid:67e55044-10b1-426f-9247-bb680e5fe0c8");
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<HostId>(&json).unwrap(), s);
    }
}
