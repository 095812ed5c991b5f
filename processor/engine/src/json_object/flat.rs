//! One pass over a flat JSON object, the common shape of a record: keys without escapes,
//! values that are plain strings, short numbers or literals.
//!
//! It validates and notes spans in the same pass, where the general path runs serde_json's
//! parser with a visitor per field and a second look at some values. It says nothing
//! about text outside that shape (nested values, escapes, exponents, errors): the caller
//! then takes the general path, which also words any error.

use std::ops::Range;

use super::{Name, Slot};

/// The fields of `text`, each as the span of its key (between the quotes) and of its
/// value, when `text` is a valid JSON object of the flat shape (module docs); `None`
/// otherwise. `text` is valid UTF-8, so only the JSON grammar is checked here. The list
/// has room for a few more fields, which steps often add. The flag says whether two keys
/// may be the same (false means they all differ).
pub(super) fn fields(text: &str) -> Option<(Vec<(Name, Slot)>, bool)> {
    let b = text.as_bytes();
    let mut at = skip_space(b, 0);
    if b.get(at) != Some(&b'{') {
        return None;
    }
    at = skip_space(b, at + 1);
    let mut out = Vec::with_capacity(FIELDS_WITH_ROOM);
    let mut seen = KeySketch::default();
    if b.get(at) != Some(&b'}') {
        loop {
            let key = plain_string(b, at)?;
            seen.add(b, &key);
            at = key.end + 1;
            // Compact JSON (no space around the colon) takes the first branch.
            at = if b.get(at) == Some(&b':') {
                at + 1
            } else {
                let colon = skip_space(b, at);
                if b.get(colon) != Some(&b':') {
                    return None;
                }
                colon + 1
            };
            let value = scalar(b, skip_space(b, at))?;
            at = skip_space(b, value.end);
            out.push((Name::Span(key), Slot::Raw(value)));
            match b.get(at) {
                Some(b',') => at = skip_space(b, at + 1),
                Some(b'}') => break,
                _ => return None,
            }
        }
    }
    (skip_space(b, at + 1) == b.len()).then_some((out, seen.maybe_repeated))
}

/// Notes keys by length and first and last byte, hashed to one bit of 64 each: keys that
/// land on distinct bits all differ, so the full check for repeated keys is skipped.
#[derive(Default)]
struct KeySketch {
    bits: u64,
    maybe_repeated: bool,
}

impl KeySketch {
    fn add(&mut self, b: &[u8], key: &Range<usize>) {
        let first = b.get(key.start).copied().unwrap_or(0);
        let last = key
            .end
            .checked_sub(1)
            .and_then(|i| b.get(i))
            .copied()
            .unwrap_or(0);
        let traits = (key.len() as u64) << 16 | u64::from(first) << 8 | u64::from(last);
        // Fibonacci hashing: the top six bits of the product pick the bit.
        let bit = 1u64 << (traits.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58);
        self.maybe_repeated |= self.bits & bit != 0;
        self.bits |= bit;
    }
}

/// Room for the fields of a typical record and the ones its steps add.
const FIELDS_WITH_ROOM: usize = 12;

/// The first position from `at` that is not JSON whitespace.
fn skip_space(b: &[u8], mut at: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(at) {
        at += 1;
    }
    at
}

/// The text between the quotes of the string that starts at `at`, when it has no escapes
/// (and no control characters, which JSON refuses).
fn plain_string(b: &[u8], at: usize) -> Option<Range<usize>> {
    if b.get(at) != Some(&b'"') {
        return None;
    }
    let start = at + 1;
    let end = first_stop(b, start)?;
    (b.get(end) == Some(&b'"')).then_some(start..end)
}

/// The position of the first byte from `from` on that [`ENDS_PLAIN`] holds, looking at
/// eight bytes at a time while eight are left.
fn first_stop(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(word) = b.get(i..i + 8) {
        let stops = stop_bytes(u64::from_le_bytes(word.try_into().ok()?));
        if stops != 0 {
            return Some(i + (stops.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    b.get(i..)?
        .iter()
        .position(|&c| ENDS_PLAIN[usize::from(c)])
        .map(|n| i + n)
}

/// The word's bytes that [`ENDS_PLAIN`] holds (a quote, a backslash, a control
/// character), as the high bit of each; only the lowest is exact (the borrows of these
/// tests can mark bytes above a true one), which is the one [`first_stop`] reads.
fn stop_bytes(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGHS;
    below(w ^ (ONES * u64::from(b'"')), 1)
        | below(w ^ (ONES * u64::from(b'\\')), 1)
        | below(w, 0x20)
}

/// The bytes a plain string's text stops at: its closing quote, a backslash (an escape)
/// and the control characters JSON refuses; the bytes a string needs escaped.
pub(super) static ENDS_PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        table[c] = true;
        c += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// The span of the scalar value that starts at `at`.
fn scalar(b: &[u8], at: usize) -> Option<Range<usize>> {
    let end = match *b.get(at)? {
        b'"' => plain_string(b, at)?.end + 1,
        b't' => literal(b, at, b"true")?,
        b'f' => literal(b, at, b"false")?,
        b'n' => literal(b, at, b"null")?,
        b'-' | b'0'..=b'9' => number(b, at)?,
        _ => return None,
    };
    Some(at..end)
}

fn literal(b: &[u8], at: usize, word: &[u8]) -> Option<usize> {
    let end = at + word.len();
    (b.get(at..end)? == word).then_some(end)
}

/// The end of the number that starts at `at`, when it has no exponent and is short enough
/// (at most [`LONGEST_NUMBER`] characters) that it cannot be out of a double's range.
fn number(b: &[u8], at: usize) -> Option<usize> {
    let mut i = at + usize::from(b.get(at) == Some(&b'-'));
    match b.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i += digits(b, i),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let n = digits(b, i + 1);
        if n == 0 {
            return None;
        }
        i += 1 + n;
    }
    let exponent = matches!(b.get(i), Some(b'e' | b'E'));
    (!exponent && i - at <= LONGEST_NUMBER).then_some(i)
}

/// A number this long or shorter, without an exponent, is below 1e300.
pub(super) const LONGEST_NUMBER: usize = 300;

fn digits(b: &[u8], at: usize) -> usize {
    b.get(at..).map_or(0, |rest| {
        rest.iter().take_while(|c| c.is_ascii_digit()).count()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy;
    use serde_json::Value;

    /// When the scan answers, serde_json accepts the text and reads the same fields.
    fn agrees(text: &str) -> bool {
        let Some((spans, maybe_repeated)) = fields(text) else {
            return false;
        };
        let tree: Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("scan accepted {text:?}, serde_json says {e}"));
        let Value::Object(map) = tree else {
            panic!("scan accepted a non-object {text:?}")
        };
        let keys: std::collections::HashSet<&str> = spans
            .iter()
            .filter_map(|(k, _)| match k {
                Name::Span(k) => Some(&text[k.clone()]),
                Name::Owned(_) => None,
            })
            .collect();
        assert!(
            maybe_repeated || keys.len() == spans.len(),
            "repeated keys not flagged: {text:?}"
        );
        let mut seen = serde_json::Map::new();
        for (k, v) in spans {
            let (Name::Span(k), Slot::Raw(v)) = (k, v) else {
                panic!("the scan makes spans only")
            };
            let value: Value = serde_json::from_str(&text[v.clone()]).unwrap();
            seen.insert(text[k].to_string(), value);
        }
        assert_eq!(seen, map, "{text:?}");
        true
    }

    #[test]
    fn distinct_keys_of_a_typical_record_skip_the_repeat_check() {
        let text = r#"{"orderId":"o-1","region":"eu-west","total":12.5,"items":3}"#;
        assert!(matches!(fields(text), Some((_, false))));
        assert!(matches!(fields(r#"{"a":1,"b":2,"a":3}"#), Some((_, true))));
    }

    #[test]
    fn flat_objects_are_read_in_one_pass() {
        for text in [
            r#"{"orderId":"o-1","region":"eu-west","total":12.5,"items":3}"#,
            "{}",
            " \t{ } \r\n",
            r#"{ "a" : -0 , "b":true,"c":false ,"d":null,"e":"é ☃","f":0.25,"g":-17}"#,
            r#"{"a":1,"a":2}"#,
            r#"{"":""}"#,
        ] {
            assert!(agrees(text), "not scanned: {text}");
        }
    }

    #[test]
    fn other_shapes_and_errors_are_left_to_the_full_parse() {
        let long = format!(r#"{{"a":{}}}"#, "9".repeat(LONGEST_NUMBER + 1));
        for text in [
            // Valid, but not flat: the full parse reads them.
            r#"{"a":[1]}"#,
            r#"{"a":{"b":1}}"#,
            r#"{"a\"":1}"#,
            r#"{"a":"\n"}"#,
            r#"{"a":1e3}"#,
            r#"{"a":1E-3}"#,
            long.as_str(),
            // Invalid: the full parse words the error.
            "",
            "{",
            "[1]",
            r#"{"a":1,}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":-}"#,
            r#"{"a":+1}"#,
            r#"{"a":tru}"#,
            r#"{"a":truex}"#,
            r#"{"a":nul}"#,
            "{\"a\":\"x\u{1}\"}",
            r#"{"a" 1}"#,
            r#"{a:1}"#,
            r#"{"a":1}}"#,
            r#"{"a":1} x"#,
            r#"{"a":1 "b":2}"#,
            "\u{c}{}",
        ] {
            assert!(fields(text).is_none(), "scanned: {text}");
        }
    }

    const TOKENS: [&str; 22] = [
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        " ",
        "\"a\"",
        "\"b\"",
        "\"\\n\"",
        "\"é\"",
        "\"\u{1}\"",
        "0",
        "1",
        "-",
        ".",
        "5",
        "e",
        "true",
        "null",
        "nul",
        "\"",
    ];

    proptest::proptest! {
        /// Text made of JSON's tokens, valid or not: whatever the scan accepts, serde_json
        /// accepts and reads the same way.
        #[test]
        fn never_accepts_what_serde_json_refuses(
            tokens in proptest::collection::vec(proptest::sample::select(&TOKENS[..]), 0..12)
        ) {
            let text = tokens.concat();
            agrees(&text);
            agrees(&format!("{{{text}}}"));
        }

        /// The word-at-a-time search finds the same stop as a byte-by-byte one.
        #[test]
        fn first_stop_matches_a_byte_scan(
            bytes in proptest::collection::vec(proptest::prop_oneof![
                proptest::num::u8::ANY,
                proptest::sample::select(&b"\"\\\x00\x1f ~\x7f\x80\xff"[..]),
                proptest::sample::select(&b"abcdefgh"[..]),
            ], 0..40),
            from in 0usize..42,
        ) {
            let slow = bytes
                .get(from..)
                .and_then(|rest| rest.iter().position(|&c| ENDS_PLAIN[usize::from(c)]))
                .map(|n| from + n);
            proptest::prop_assert_eq!(first_stop(&bytes, from), slow);
        }

        /// Every flat object serde_json writes is scanned.
        #[test]
        fn scans_every_flat_object(
            entries in proptest::collection::btree_map("[a-z é]{0,4}", proptest::prop_oneof![
                proptest::num::i64::ANY.prop_map(Value::from),
                (-100_000_000i64..100_000_000).prop_map(|c| Value::from(c as f64 / 100.0)),
                "[a-z é☃]{0,6}".prop_map(Value::from),
                proptest::bool::ANY.prop_map(Value::from),
                proptest::strategy::Just(Value::Null),
            ], 0..6)
        ) {
            let text = serde_json::to_string(&entries).unwrap();
            proptest::prop_assert!(agrees(&text), "not scanned: {}", text);
        }
    }
}
