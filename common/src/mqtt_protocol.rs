//! `mqtt.protocol`: which MQTT version a client speaks. The edge speaks MQTT 5 by default, whose
//! PUBACK reason codes tell it when the broker threw a batch away ("no matching subscribers"); 3.1.1
//! is for brokers that speak nothing else, such as RabbitMQ before 3.13. The sink always speaks 3.1.1.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttProtocol {
    V5,
    V311,
}

impl fmt::Display for MqttProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V5 => "5",
            Self::V311 => "3.1.1",
        })
    }
}

impl<'de> Deserialize<'de> for MqttProtocol {
    /// `5` (a number in the settings file, or text) or `3.1.1`.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Version;
        impl Visitor<'_> for Version {
            type Value = MqttProtocol;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`5` or `3.1.1`")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<MqttProtocol, E> {
                match text.trim() {
                    "5" => Ok(MqttProtocol::V5),
                    "3.1.1" => Ok(MqttProtocol::V311),
                    _ => Err(E::invalid_value(de::Unexpected::Str(text), &self)),
                }
            }
            fn visit_u64<E: de::Error>(self, number: u64) -> Result<MqttProtocol, E> {
                match number {
                    5 => Ok(MqttProtocol::V5),
                    _ => Err(E::invalid_value(de::Unexpected::Unsigned(number), &self)),
                }
            }
            fn visit_i64<E: de::Error>(self, number: i64) -> Result<MqttProtocol, E> {
                match u64::try_from(number) {
                    Ok(number) => self.visit_u64(number),
                    Err(_) => Err(E::invalid_value(de::Unexpected::Signed(number), &self)),
                }
            }
        }
        deserializer.deserialize_any(Version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_versions_as_text_or_number() {
        let read = |json: &str| serde_json::from_str::<MqttProtocol>(json);
        assert_eq!(read(r#""5""#).unwrap(), MqttProtocol::V5);
        assert_eq!(read("5").unwrap(), MqttProtocol::V5);
        assert_eq!(read(r#""3.1.1""#).unwrap(), MqttProtocol::V311);
        for bad in [r#""3""#, "4", r#""v5""#, "3.1", "-5"] {
            let err = read(bad).unwrap_err().to_string();
            assert!(err.contains("`5` or `3.1.1`"), "{bad}: {err}");
        }
        assert_eq!(MqttProtocol::V311.to_string(), "3.1.1");
    }
}
