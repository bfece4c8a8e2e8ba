//! A lean JSON reader for serde: what the review views read is read as serde_json reads it
//! (the same visitor calls, and serde_json itself decodes escaped strings and numbers, so
//! their values and errors are its own); what they skip is skipped by `scan.rs` 64 bytes at a
//! time. serde_json spends about 13 instructions a byte skipping; this about one.
//!
//! Differences from serde_json, none of which a decision can see: the inside of a skipped
//! string, array or object is not validated beyond its quotes and brackets (the API server
//! only sends valid JSON; a client that sends invalid JSON in a field no decision reads gets
//! the answer the fields it sent call for), and error messages name a byte offset rather than
//! a line and column. The caller checks the body is UTF-8 before.

use std::borrow::Cow;

use serde::de::{
    self, DeserializeSeed, EnumAccess, IgnoredAny, IntoDeserializer, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};
use serde_json::Error;

use crate::scan;

/// Arrays and objects read (not skipped) may nest this deep: serde_json's limit.
const MAX_DEPTH: usize = 128;

/// `body` as text: checked for UTF-8 only when it is not all ASCII (a review hardly ever has a
/// byte above 0x7f), a check that costs a fifth of the full one.
pub fn text(body: &[u8]) -> Result<&str, std::str::Utf8Error> {
    if scan::is_ascii(body) {
        // SAFETY: ASCII is valid UTF-8.
        Ok(unsafe { std::str::from_utf8_unchecked(body) })
    } else {
        std::str::from_utf8(body)
    }
}

/// Reads the whole of `json` as one `T`.
pub fn from_str<'de, T: de::Deserialize<'de>>(json: &'de str) -> Result<T, Error> {
    let mut reader = Reader {
        text: json,
        pos: 0,
        remaining_depth: MAX_DEPTH,
    };
    let value = T::deserialize(&mut reader)?;
    match reader.peek() {
        None => Ok(value),
        Some(_) => Err(reader.error("trailing characters")),
    }
}

struct Reader<'de> {
    text: &'de str,
    pos: usize,
    remaining_depth: usize,
}

impl<'de> Reader<'de> {
    /// The next byte that is not whitespace, not consumed.
    #[inline]
    fn peek(&mut self) -> Option<u8> {
        let bytes = self.text.as_bytes();
        while let Some(&byte) = bytes.get(self.pos) {
            match byte {
                b' ' | b'\n' | b'\t' | b'\r' => self.pos += 1,
                _ => return Some(byte),
            }
        }
        None
    }

    /// The next byte that is not whitespace, or an error naming what was expected.
    #[inline]
    fn peek_or(&mut self, expected: &str) -> Result<u8, Error> {
        match self.peek() {
            Some(byte) => Ok(byte),
            None => Err(self.error(format_args!("end of input, expected {expected}"))),
        }
    }

    #[cold]
    fn error(&self, what: impl std::fmt::Display) -> Error {
        de::Error::custom(format_args!("{what} at byte {}", self.pos))
    }

    fn literal(&mut self, word: &str) -> Result<(), Error> {
        if self.text.as_bytes()[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.error("expected a JSON value"))
        }
    }

    /// The string whose opening quote is at `pos`: borrowed when it has no escapes.
    fn string(&mut self) -> Result<Cow<'de, str>, Error> {
        let start = self.pos + 1;
        let bytes = self.text.as_bytes();
        let (mut at, mut escapes) = (start, false);
        loop {
            // A quote, a backslash, a control character, or the end.
            at = scan::string_stop(bytes, at);
            match bytes.get(at) {
                Some(b'"') => break,
                Some(b'\\') => {
                    escapes = true;
                    at += 2;
                }
                Some(_) => {
                    self.pos = at;
                    return Err(self.error("control character in a string"));
                }
                None => {
                    self.pos = bytes.len();
                    return Err(self.error("end of input in a string"));
                }
            }
        }
        self.pos = at + 1;
        // Quotes are ASCII, so both ends are character boundaries.
        if escapes {
            serde_json::from_str(&self.text[start - 1..=at]).map(Cow::Owned)
        } else {
            Ok(Cow::Borrowed(&self.text[start..at]))
        }
    }

    /// The number at `pos`, as serde_json reads it.
    fn number<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value, Error> {
        let bytes = self.text.as_bytes();
        let start = self.pos;
        let mut end = start;
        while let Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') = bytes.get(end) {
            end += 1;
        }
        let number: serde_json::Number = serde_json::from_str(&self.text[start..end])
            .map_err(|err| self.error(format_args!("invalid number ({err})")))?;
        self.pos = end;
        if let Some(n) = number.as_u64() {
            visitor.visit_u64(n)
        } else if let Some(n) = number.as_i64() {
            visitor.visit_i64(n)
        } else if let Some(n) = number.as_f64() {
            visitor.visit_f64(n)
        } else {
            Err(self.error("invalid number"))
        }
    }

    /// Skips one value: strings and containers by their quotes and brackets only.
    fn skip(&mut self) -> Result<(), Error> {
        let bytes = self.text.as_bytes();
        let end = match self.peek_or("a JSON value")? {
            b'"' => scan::string_end(bytes, self.pos + 1),
            b'[' | b'{' => scan::container_end(bytes, self.pos + 1),
            b't' => return self.literal("true"),
            b'f' => return self.literal("false"),
            b'n' => return self.literal("null"),
            b'-' | b'0'..=b'9' => return self.number(IgnoredAny).map(|_| ()),
            _ => return Err(self.error("expected a JSON value")),
        };
        match end {
            Some(end) => {
                self.pos = end + 1;
                Ok(())
            }
            None => {
                self.pos = bytes.len();
                Err(self.error("end of input in a string, array or object"))
            }
        }
    }

    /// Runs `read` one nesting level down.
    fn nested<T>(&mut self, read: impl FnOnce(&mut Self) -> Result<T, Error>) -> Result<T, Error> {
        // As serde_json counts: 127 levels read, the 128th refused.
        self.remaining_depth -= 1;
        if self.remaining_depth == 0 {
            self.remaining_depth += 1;
            return Err(self.error("recursion limit exceeded"));
        }
        let result = read(self);
        self.remaining_depth += 1;
        result
    }

    /// The closing bracket of a container whose entries the visitor has read.
    fn close(&mut self, bracket: u8) -> Result<(), Error> {
        match self.peek() {
            Some(byte) if byte == bracket => {
                self.pos += 1;
                Ok(())
            }
            _ => Err(self.error(format_args!("expected `{}`", bracket as char))),
        }
    }

    /// Before the next entry of a container: `,` unless it is the first; `None` at its end.
    fn next_entry(&mut self, first: &mut bool, close: u8) -> Result<Option<()>, Error> {
        let byte = self.peek_or("`,` or the end of an array or object")?;
        if byte == close {
            return Ok(None);
        }
        if !std::mem::replace(first, false) {
            if byte != b',' {
                return Err(self.error("expected `,` or the end of an array or object"));
            }
            // A trailing comma fails next: a `]` is no value, a `}` no key.
            self.pos += 1;
        }
        Ok(Some(()))
    }
}

impl<'de> de::Deserializer<'de> for &mut Reader<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.peek_or("a JSON value")? {
            b'{' => {
                self.pos += 1;
                let value = self.nested(|reader| {
                    visitor.visit_map(Entries {
                        reader,
                        first: true,
                    })
                })?;
                self.close(b'}')?;
                Ok(value)
            }
            b'[' => {
                self.pos += 1;
                let value = self.nested(|reader| {
                    visitor.visit_seq(Entries {
                        reader,
                        first: true,
                    })
                })?;
                self.close(b']')?;
                Ok(value)
            }
            b'"' => match self.string()? {
                Cow::Borrowed(s) => visitor.visit_borrowed_str(s),
                Cow::Owned(s) => visitor.visit_string(s),
            },
            b't' => {
                self.literal("true")?;
                visitor.visit_bool(true)
            }
            b'f' => {
                self.literal("false")?;
                visitor.visit_bool(false)
            }
            b'n' => {
                self.literal("null")?;
                visitor.visit_unit()
            }
            b'-' | b'0'..=b'9' => self.number(visitor),
            _ => Err(self.error("expected a JSON value")),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.peek() == Some(b'n') {
            self.literal("null")?;
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.skip()?;
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    /// As serde_json: a string names a unit variant; `{"Variant": value}` any variant.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.peek_or("an enum")? {
            b'"' => match self.string()? {
                Cow::Borrowed(s) => visitor.visit_enum(s.into_deserializer()),
                Cow::Owned(s) => visitor.visit_enum(s.into_deserializer()),
            },
            b'{' => {
                self.pos += 1;
                let value = self.nested(|reader| visitor.visit_enum(Variant { reader }))?;
                self.close(b'}')?;
                Ok(value)
            }
            _ => Err(self.error("expected an enum (a string or an object)")),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map struct identifier
    }
}

/// The entries of an object or array being read.
struct Entries<'r, 'de> {
    reader: &'r mut Reader<'de>,
    first: bool,
}

impl<'de> MapAccess<'de> for Entries<'_, 'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        if self.reader.next_entry(&mut self.first, b'}')?.is_none() {
            return Ok(None);
        }
        if self.reader.peek() != Some(b'"') {
            return Err(self.reader.error("expected a string key"));
        }
        seed.deserialize(&mut *self.reader).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        if self.reader.peek() != Some(b':') {
            return Err(self.reader.error("expected `:`"));
        }
        self.reader.pos += 1;
        seed.deserialize(&mut *self.reader)
    }
}

impl<'de> SeqAccess<'de> for Entries<'_, 'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        if self.reader.next_entry(&mut self.first, b']')?.is_none() {
            return Ok(None);
        }
        seed.deserialize(&mut *self.reader).map(Some)
    }
}

/// `{"Variant": value}`, its opening brace read.
struct Variant<'r, 'de> {
    reader: &'r mut Reader<'de>,
}

impl<'de> EnumAccess<'de> for Variant<'_, 'de> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Error> {
        if self.reader.peek() != Some(b'"') {
            return Err(self.reader.error("expected a string key"));
        }
        let variant = seed.deserialize(&mut *self.reader)?;
        if self.reader.peek() != Some(b':') {
            return Err(self.reader.error("expected `:`"));
        }
        self.reader.pos += 1;
        Ok((variant, self))
    }
}

impl<'de> VariantAccess<'de> for Variant<'_, 'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        de::Deserialize::deserialize(&mut *self.reader)
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(&mut *self.reader)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_any(&mut *self.reader, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_any(&mut *self.reader, visitor)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    /// Read in full (as a tree), the lean reader accepts and refuses what serde_json does, and
    /// reads the same values.
    fn same_as_serde_json(text: &str) -> Result<(), TestCaseError> {
        let lean = from_str::<Value>(text);
        let reference = serde_json::from_str::<Value>(text);
        match (&lean, &reference) {
            (Ok(lean), Ok(reference)) => prop_assert_eq!(lean, reference, "{}", text),
            (Err(_), Err(_)) => {}
            _ => prop_assert!(false, "{text:?}: lean {lean:?}, serde_json {reference:?}"),
        }
        // Skipped whole: every JSON document is skipped; nothing else is accepted.
        if reference.is_ok() {
            prop_assert!(from_str::<IgnoredAny>(text).is_ok(), "{}", text);
        }
        Ok(())
    }

    #[test]
    fn reads_as_serde_json_does() {
        for text in [
            "",
            " ",
            "null",
            "true",
            "false",
            "nul",
            "truex",
            "0",
            "-0",
            "01",
            "1.",
            "1.5e3",
            "-1e400",
            "1e400",
            "18446744073709551616",
            "-9223372036854775809",
            "[1,]",
            "[,1]",
            "[1 2]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{1:2}",
            "{\"a\":1}}",
            "[]]",
            "\"\\u00e9\\n\"",
            "\"\\ud800\"",
            "\"\\x\"",
            "\"a\u{1}b\"",
            "\"unterminated",
            "[\"a\",{\"b\":[null]}]",
            " { \"a\" : [ 1 , 2 ] } ",
            "{\"a\":1,\"a\":2}",
            "\"\u{e9}\"",
        ] {
            same_as_serde_json(text).unwrap();
        }
        let deep = |n: usize| "[".repeat(n) + &"]".repeat(n);
        same_as_serde_json(&deep(127)).unwrap();
        same_as_serde_json(&deep(128)).unwrap();
        assert!(from_str::<IgnoredAny>(&deep(1 << 20)).is_ok());
    }

    /// JSON text from its building blocks, valid or not.
    fn json_tokens() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                proptest::sample::select(vec![
                    "{",
                    "}",
                    "[",
                    "]",
                    ",",
                    ":",
                    " ",
                    "\"",
                    "\\",
                    "\\\"",
                    "\\u00e9",
                    "\\ud83d\\ude00",
                    "null",
                    "true",
                    "fals",
                    "0",
                    "-1",
                    "1.5",
                    "2e9",
                    "-",
                    "a",
                    "é",
                    "\"k\":",
                    "\n",
                ])
                .prop_map(String::from),
                "[a-z0-9]{1,3}",
            ],
            0..24,
        )
        .prop_map(|tokens| tokens.concat())
    }

    /// Arbitrary JSON up to `depth` levels, its object keys drawn from the regex `keys` (the
    /// admission tests share it).
    pub(crate) fn any_json(depth: u32, keys: &'static str) -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(depth, 8 * depth, 4, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map(keys, inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn token_soup_is_read_as_serde_json_reads_it(text in json_tokens()) {
            same_as_serde_json(&text)?;
        }

        #[test]
        fn json_documents_are_read_as_serde_json_reads_them(value in any_json(5, ".{0,6}"), pretty in any::<bool>()) {
            let text = if pretty {
                serde_json::to_string_pretty(&value).unwrap()
            } else {
                serde_json::to_string(&value).unwrap()
            };
            same_as_serde_json(&text)?;
        }
    }
}
