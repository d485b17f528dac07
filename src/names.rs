//! The names of enumeration values, taken from their serde derive.
//!
//! A config enum such as `HealthKind` gets its file spelling (`"postgres"`, `"per_packet"`) from
//! `#[serde(rename_all = ...)]`. [`serde_name`] reads that same spelling back, so the `name()`
//! methods used in summaries, log lines, metric labels and reports never repeat it by hand.
//! Owns only that lookup; which enums have names belongs to their modules.

use std::fmt;

use serde::Serialize;
use serde::ser::{self, Impossible};

/// The serde name of `value`, a unit variant of an enum that derives `Serialize`:
/// `serde_name(&UdpMode::PerPacket) == "per_packet"`.
///
/// # Panics
///
/// When `value` does not serialize as a unit variant (a struct, a number, a variant with data).
/// That is a mistake in the caller's type, which its unit tests catch: every enum that uses this
/// has unit variants only.
pub fn serde_name<T: Serialize>(value: &T) -> &'static str {
    match value.serialize(VariantName) {
        Ok(name) => name,
        Err(NotUnitVariant) => panic!(
            "serde_name: a {} value is not a unit variant",
            std::any::type_name::<T>()
        ),
    }
}

/// The error of [`VariantName`]: the value was something other than a unit variant.
#[derive(Debug)]
struct NotUnitVariant;

impl fmt::Display for NotUnitVariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a unit variant")
    }
}

impl std::error::Error for NotUnitVariant {}

impl ser::Error for NotUnitVariant {
    fn custom<M: fmt::Display>(_: M) -> Self {
        NotUnitVariant
    }
}

/// A serializer that accepts only a unit variant and returns its name.
struct VariantName;

/// Every serializer method but `serialize_unit_variant` refuses the value.
macro_rules! refuse {
    ($($method:ident($($arg:ty),*);)*) => {
        $(fn $method(self, $(_: $arg),*) -> Result<&'static str, NotUnitVariant> {
            Err(NotUnitVariant)
        })*
    };
}

impl ser::Serializer for VariantName {
    type Ok = &'static str;
    type Error = NotUnitVariant;
    type SerializeSeq = Impossible<&'static str, NotUnitVariant>;
    type SerializeTuple = Impossible<&'static str, NotUnitVariant>;
    type SerializeTupleStruct = Impossible<&'static str, NotUnitVariant>;
    type SerializeTupleVariant = Impossible<&'static str, NotUnitVariant>;
    type SerializeMap = Impossible<&'static str, NotUnitVariant>;
    type SerializeStruct = Impossible<&'static str, NotUnitVariant>;
    type SerializeStructVariant = Impossible<&'static str, NotUnitVariant>;

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<&'static str, NotUnitVariant> {
        Ok(variant)
    }

    refuse! {
        serialize_bool(bool);
        serialize_i8(i8);
        serialize_i16(i16);
        serialize_i32(i32);
        serialize_i64(i64);
        serialize_u8(u8);
        serialize_u16(u16);
        serialize_u32(u32);
        serialize_u64(u64);
        serialize_f32(f32);
        serialize_f64(f64);
        serialize_char(char);
        serialize_str(&str);
        serialize_bytes(&[u8]);
        serialize_none();
        serialize_unit();
        serialize_unit_struct(&'static str);
    }

    fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<&'static str, NotUnitVariant> {
        Err(NotUnitVariant)
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<&'static str, NotUnitVariant> {
        Err(NotUnitVariant)
    }

    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<&'static str, NotUnitVariant> {
        Err(NotUnitVariant)
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, NotUnitVariant> {
        Err(NotUnitVariant)
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, NotUnitVariant> {
        Err(NotUnitVariant)
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, NotUnitVariant> {
        Err(NotUnitVariant)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, NotUnitVariant> {
        Err(NotUnitVariant)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, NotUnitVariant> {
        Err(NotUnitVariant)
    }

    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, NotUnitVariant> {
        Err(NotUnitVariant)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, NotUnitVariant> {
        Err(NotUnitVariant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        AlertKind, HealthKind, OnBackendDown, PersistenceKind, PostgresRole, Protocol, RedisRole,
        RoleName, UdpMode,
    };

    #[derive(Serialize)]
    #[serde(rename_all = "kebab-case")]
    enum Sample {
        FirstOne,
        #[serde(rename = "other")]
        Second,
        WithData(u8),
    }

    #[test]
    fn unit_variants_give_their_serde_names() {
        assert_eq!(serde_name(&Sample::FirstOne), "first-one");
        assert_eq!(serde_name(&Sample::Second), "other");
    }

    #[test]
    #[should_panic(expected = "is not a unit variant")]
    fn other_values_are_refused() {
        serde_name(&Sample::WithData(1));
    }

    #[test]
    #[should_panic(expected = "is not a unit variant")]
    fn plain_values_are_refused() {
        serde_name(&"tcp");
    }

    /// The names the config file, summaries, logs and metric labels have always used.
    #[test]
    fn config_enums_keep_their_names() {
        assert_eq!(Protocol::Tcp.name(), "tcp");
        assert_eq!(Protocol::Udp.name(), "udp");
        assert_eq!(UdpMode::Flow.name(), "flow");
        assert_eq!(UdpMode::PerPacket.name(), "per_packet");
        let kinds = [
            HealthKind::Tcp,
            HealthKind::Redis,
            HealthKind::Postgres,
            HealthKind::None,
        ];
        let names: Vec<_> = kinds.iter().map(|k| k.name()).collect();
        assert_eq!(names, ["tcp", "redis", "postgres", "none"]);
        let roles = [
            RoleName::Any,
            RoleName::Master,
            RoleName::Replica,
            RoleName::Primary,
            RoleName::Standby,
        ];
        let names: Vec<_> = roles.iter().map(|r| r.name()).collect();
        assert_eq!(names, ["any", "master", "replica", "primary", "standby"]);
        let names: Vec<_> = [RedisRole::Any, RedisRole::Master, RedisRole::Replica]
            .iter()
            .map(|r| r.name())
            .collect();
        assert_eq!(names, ["any", "master", "replica"]);
        let names: Vec<_> = [
            PostgresRole::Any,
            PostgresRole::Primary,
            PostgresRole::Standby,
        ]
        .iter()
        .map(|r| r.name())
        .collect();
        assert_eq!(names, ["any", "primary", "standby"]);
        assert_eq!(OnBackendDown::Keep.name(), "keep");
        assert_eq!(OnBackendDown::Shutdown.name(), "shutdown");
        assert_eq!(PersistenceKind::SourceIp.name(), "source_ip");
        let names: Vec<_> = AlertKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(
            names,
            [
                "backend_down",
                "backend_up",
                "service_down",
                "service_up",
                "local_exhaustion",
                "local_recovery",
                "discovery_down",
                "discovery_up"
            ]
        );
    }

    /// A name and the spelling the config file takes are the same string.
    #[test]
    fn names_parse_back_as_config_values() {
        #[derive(serde::Deserialize)]
        struct One<T> {
            v: T,
        }
        fn back<T: serde::de::DeserializeOwned>(name: &str) -> T {
            toml::from_str::<One<T>>(&format!("v = {name:?}"))
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .v
        }
        for k in AlertKind::ALL {
            assert_eq!(back::<AlertKind>(k.name()), k);
        }
        for m in [UdpMode::Flow, UdpMode::PerPacket] {
            assert_eq!(back::<UdpMode>(m.name()), m);
        }
        assert_eq!(
            back::<PersistenceKind>(PersistenceKind::SourceIp.name()),
            PersistenceKind::SourceIp
        );
    }
}
