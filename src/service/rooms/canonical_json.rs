//! Reading stored events straight into ruma's `CanonicalJsonObject`.
//!
//! ruma deserialises a `CanonicalJsonValue` by first building a `serde_json::Value` tree and
//! then converting it node by node, so every event read from the store was built twice. Reading
//! an event is what a first sync, a sliding-sync room list and a page of history mostly do, so
//! this builds the canonical tree directly, with ruma's rules: integers within ±(2⁵³−1), no
//! floats, the last of duplicate keys kept.

use std::fmt;

use ruma::{CanonicalJsonObject, CanonicalJsonValue, Int};
use serde::{
    Deserialize, Deserializer,
    de::{self, MapAccess, SeqAccess, Visitor},
};

/// For `#[serde(deserialize_with = …)]` on a `CanonicalJsonObject` field.
pub(crate) fn object<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<CanonicalJsonObject, D::Error> {
    deserializer.deserialize_map(ObjectVisitor)
}

/// One value, read directly.
struct Direct(CanonicalJsonValue);

impl<'de> Deserialize<'de> for Direct {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor).map(Direct)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = CanonicalJsonValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a canonical JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(CanonicalJsonValue::Null)
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
        Ok(CanonicalJsonValue::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
        Int::new(n)
            .map(CanonicalJsonValue::Integer)
            .ok_or_else(|| E::custom("integer out of canonical JSON's range"))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        Int::try_from(n)
            .map(CanonicalJsonValue::Integer)
            .map_err(|_| E::custom("integer out of canonical JSON's range"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Err(E::custom("canonical JSON has no floats"))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(CanonicalJsonValue::String(s.to_owned()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
        Ok(CanonicalJsonValue::String(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(Direct(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(CanonicalJsonValue::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        ObjectVisitor.visit_map(map).map(CanonicalJsonValue::Object)
    }
}

struct ObjectVisitor;

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = CanonicalJsonObject;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a canonical JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut object = CanonicalJsonObject::new();
        while let Some((key, Direct(value))) = map.next_entry::<String, Direct>()? {
            object.insert(key, value);
        }
        Ok(object)
    }
}

#[cfg(test)]
mod tests {
    use ruma::CanonicalJsonObject;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Holder {
        #[serde(deserialize_with = "super::object")]
        pdu: CanonicalJsonObject,
    }

    fn both(
        json: &str,
    ) -> (
        Result<CanonicalJsonObject, String>,
        Result<CanonicalJsonObject, String>,
    ) {
        let direct = serde_json::from_str::<Holder>(&format!(r#"{{"pdu":{json}}}"#))
            .map(|h| h.pdu)
            .map_err(|e| e.to_string());
        let ruma = serde_json::from_str::<CanonicalJsonObject>(json).map_err(|e| e.to_string());
        (direct, ruma)
    }

    #[test]
    fn reads_what_ruma_reads() {
        let event = r#"{"auth_events":["$a","$b"],"content":{"body":"h\u00e9llo \"q\" \ud83d\ude00",
            "n":-9007199254740991,"m":9007199254740991,"ok":true,"no":false,"nil":null,
            "deep":{"a":[1,[2,{"b":[]}],{}]}},"depth":12,"origin_server_ts":1700000000000,
            "type":"m.room.message","unsigned":{"age_ts":0},"dup":1,"dup":2}"#;
        let (direct, ruma) = both(event);
        assert_eq!(direct.unwrap(), ruma.unwrap());
    }

    #[test]
    fn refuses_what_ruma_refuses() {
        for bad in [
            r#"{"f":1.5}"#,
            r#"{"f":1.0}"#,
            r#"{"big":9007199254740992}"#,
            r#"{"small":-9007199254740992}"#,
            r#"{"huge":18446744073709551615}"#,
            r#"[1]"#,
            r#""text""#,
        ] {
            let (direct, ruma) = both(bad);
            assert!(
                direct.is_err() && ruma.is_err(),
                "{bad}: {direct:?} / {ruma:?}"
            );
        }
    }
}
