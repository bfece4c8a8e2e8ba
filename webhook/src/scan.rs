//! Where a JSON string or container ends, found 64 bytes at a time: the skipping half of the
//! lean reader (`json.rs`), which reads nothing inside what it skips.
//!
//! Each block is classified into bit masks (backslashes, quotes, opening and closing brackets:
//! on x86_64 with AVX2 where the CPU has it, found at run time, else with SSE2, which every
//! x86_64 CPU has; plain code on other targets), then strings
//! are masked out the way simdjson does it: the quotes that are not escaped (a quote is
//! escaped when an odd run of backslashes precedes it), then a prefix XOR of the quote bits
//! marks the bytes inside strings. Dense escapes (the JSON inside last-applied-configuration
//! annotations) cost nothing extra. What is skipped is not validated beyond its quotes and
//! brackets; the UTF-8 of the whole body is checked before.

/// The bytes of one block that matter to the scans, bit i for byte i.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Classes {
    backslash: u64,
    quote: u64,
    /// `[` and `{`.
    open: u64,
    /// `]` and `}`.
    close: u64,
}

impl Classes {
    /// Adds the masks of one lane of a block, which starts at byte `at`.
    #[inline(always)]
    fn add(&mut self, at: usize, [backslash, quote, open, close]: [u64; 4]) {
        self.backslash |= backslash << at;
        self.quote |= quote << at;
        self.open |= open << at;
        self.close |= close << at;
    }
}

/// Scan state carried from block to block.
struct Scan {
    /// All ones while inside a string at the end of the previous block.
    in_string: u64,
    /// 1 when the previous block ended with an odd run of backslashes.
    escaped: u64,
}

impl Scan {
    /// The unescaped quotes of a block and the bytes inside strings (an opening quote counts
    /// as inside, a closing one does not).
    #[inline(always)]
    fn strings<C: Classify>(&mut self, classes: &Classes) -> (u64, u64) {
        let escaped = if classes.backslash == 0 {
            std::mem::take(&mut self.escaped)
        } else {
            escaped_bits(&mut self.escaped, classes.backslash)
        };
        let quotes = classes.quote & !escaped;
        let in_string = C::prefix_xor(quotes) ^ self.in_string;
        self.in_string = ((in_string as i64) >> 63) as u64;
        (quotes, in_string)
    }
}

/// Calls `block` with the classes of each 64-byte block of `bytes[from..]` (the last one
/// padded with spaces, which change no string, escape or bracket), until it returns a
/// position in the block.
#[inline(always)]
fn blocks<C: Classify>(
    bytes: &[u8],
    from: usize,
    mut block: impl FnMut(&Classes) -> Option<u32>,
) -> Option<usize> {
    let rest = bytes.get(from..)?;
    let mut chunks = rest.chunks_exact(64);
    let mut offset = from;
    for chunk in &mut chunks {
        let chunk: &[u8; 64] = chunk.try_into().ok()?;
        if let Some(at) = block(&C::classify(chunk)) {
            return Some(offset + at as usize);
        }
        offset += 64;
    }
    let tail = chunks.remainder();
    if tail.is_empty() {
        return None;
    }
    let mut last = [b' '; 64];
    last[..tail.len()].copy_from_slice(tail);
    block(&C::classify(&last)).map(|at| offset + at as usize)
}

/// Runs `$scan::<classifier>(args)` with the best classifier this CPU has.
macro_rules! dispatch {
    ($scan:ident, $avx2:ident, $($arg:expr),*) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("popcnt")
                && std::arch::is_x86_feature_detected!("bmi1")
                && std::arch::is_x86_feature_detected!("pclmulqdq")
            {
                // SAFETY: the CPU has the features `$avx2` is compiled for.
                return unsafe { $avx2($($arg),*) };
            }
        }
        $scan::<Baseline>($($arg),*)
    }};
}

/// The position of the quote that closes a string whose contents start at `from`.
pub fn string_end(bytes: &[u8], from: usize) -> Option<usize> {
    dispatch!(string_end_with, string_end_avx2, bytes, from)
}

/// The position of the bracket that closes an array or object whose contents start at `from`
/// (just past its opening bracket). Brackets of both kinds count alike: in valid JSON they
/// nest properly, and what is not valid is the parser's to reject, not the skipper's.
pub fn container_end(bytes: &[u8], from: usize) -> Option<usize> {
    dispatch!(container_end_with, container_end_avx2, bytes, from)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt,bmi1,pclmulqdq")]
fn string_end_avx2(bytes: &[u8], from: usize) -> Option<usize> {
    string_end_with::<Avx2>(bytes, from)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt,bmi1,pclmulqdq")]
fn container_end_avx2(bytes: &[u8], from: usize) -> Option<usize> {
    container_end_with::<Avx2>(bytes, from)
}

#[inline(always)]
fn string_end_with<C: Classify>(bytes: &[u8], from: usize) -> Option<usize> {
    let mut scan = Scan {
        in_string: !0,
        escaped: 0,
    };
    blocks::<C>(bytes, from, |classes| {
        let (quotes, _) = scan.strings::<C>(classes);
        (quotes != 0).then(|| quotes.trailing_zeros())
    })
}

/// The first byte at or after `from` that is a quote, a backslash or a control character, or
/// `bytes.len()`: where reading a string must look next. Keys and most values read are short
/// runs of plain ASCII, passed 16 bytes a step (8 on targets without SSE2).
#[inline]
pub fn string_stop(bytes: &[u8], mut from: usize) -> usize {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    while let Some(chunk) = bytes.get(from..).and_then(<[u8]>::first_chunk::<16>) {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8,
            _mm_or_si128, _mm_set1_epi8,
        };
        // SAFETY: SSE2 is enabled (the cfg above); the load reads the 16 bytes of `chunk`,
        // unaligned loads allowed.
        let stops = unsafe {
            let v = _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>());
            let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
            let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
            // min(v, 0x1f) == v exactly for the bytes below 0x20 (unsigned).
            let control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
            _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control))
        };
        if stops != 0 {
            return from + stops.trailing_zeros() as usize;
        }
        from += 16;
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    while let Some(word) = bytes.get(from..).and_then(<[u8]>::first_chunk::<8>) {
        let stops = string_stops(u64::from_le_bytes(*word));
        if stops != 0 {
            return from + (stops.trailing_zeros() / 8) as usize;
        }
        from += 8;
    }
    bytes
        .get(from..)
        .and_then(|rest| rest.iter().position(|&byte| is_string_stop(byte)))
        .map_or(bytes.len(), |at| from + at)
}

fn is_string_stop(byte: u8) -> bool {
    byte == b'"' || byte == b'\\' || byte < 0x20
}

/// The bytes of `word` (little-endian) that are a quote, a backslash or a control character,
/// as their high bits (SWAR). Only the lowest is exact: a borrow may mark bytes above it.
#[cfg_attr(all(target_arch = "x86_64", target_feature = "sse2"), allow(dead_code))]
#[inline(always)]
fn string_stops(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let quote = has_zero(word ^ (ONES * u64::from(b'"')));
    let backslash = has_zero(word ^ (ONES * u64::from(b'\\')));
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    quote | backslash | control
}

/// Whether `bytes` is all ASCII (so valid UTF-8 with nothing more to check).
pub fn is_ascii(bytes: &[u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { is_ascii_avx2(bytes) };
    }
    bytes.is_ascii()
}

/// 128 bytes a step: the bytes OR-ed together, their high bits tested once a step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn is_ascii_avx2(bytes: &[u8]) -> bool {
    use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_movemask_epi8, _mm256_or_si256};
    let mut chunks = bytes.chunks_exact(128);
    for chunk in &mut chunks {
        // SAFETY: AVX2 is enabled for this function; the four loads read the 128 bytes of
        // `chunk`, unaligned loads allowed.
        let high = unsafe {
            let p = chunk.as_ptr().cast::<__m256i>();
            let any = _mm256_or_si256(
                _mm256_or_si256(_mm256_loadu_si256(p), _mm256_loadu_si256(p.add(1))),
                _mm256_or_si256(_mm256_loadu_si256(p.add(2)), _mm256_loadu_si256(p.add(3))),
            );
            _mm256_movemask_epi8(any)
        };
        if high != 0 {
            return false;
        }
    }
    chunks.remainder().is_ascii()
}

#[inline(always)]
fn container_end_with<C: Classify>(bytes: &[u8], from: usize) -> Option<usize> {
    let mut scan = Scan {
        in_string: 0,
        escaped: 0,
    };
    let mut depth: u32 = 1;
    blocks::<C>(bytes, from, |classes| {
        let (_, in_string) = scan.strings::<C>(classes);
        let opens = classes.open & !in_string;
        let closes = classes.close & !in_string;
        let close_count = closes.count_ones();
        if close_count < depth {
            depth = depth + opens.count_ones() - close_count;
            return None;
        }
        // Bracket by bracket, in order, until the depth reaches zero.
        let mut brackets = opens | closes;
        while brackets != 0 {
            let at = brackets.trailing_zeros();
            if opens & (1 << at) != 0 {
                depth += 1;
            } else {
                depth -= 1;
                if depth == 0 {
                    return Some(at);
                }
            }
            brackets &= brackets - 1;
        }
        None
    })
}

/// The bytes escaped by a backslash in a block whose backslashes are `backslashes`
/// (simdjson's branchless method); `carry` is 1 when the previous block ended with an odd run
/// of backslashes, and is set for the next block.
#[inline(always)]
fn escaped_bits(carry: &mut u64, backslashes: u64) -> u64 {
    const EVEN: u64 = 0x5555_5555_5555_5555;
    // A backslash escaped by the previous block's last one starts no run.
    let backslashes = backslashes & !*carry;
    let follows_escape = (backslashes << 1) | *carry;
    // Adding the runs that start on an odd bit to the backslashes carries past each run.
    let odd_starts = backslashes & !EVEN & !follows_escape;
    let (even_starts_end, overflow) = odd_starts.overflowing_add(backslashes);
    *carry = u64::from(overflow);
    let invert = even_starts_end << 1;
    (EVEN ^ invert) & follows_escape
}

/// Bit i of the result is the XOR of bits 0..=i of `x`.
#[inline(always)]
fn prefix_xor(mut x: u64) -> u64 {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    x
}

/// How a block is classified, and the bytes inside its strings found.
trait Classify {
    fn classify(block: &[u8; 64]) -> Classes;

    #[inline(always)]
    fn prefix_xor(x: u64) -> u64 {
        prefix_xor(x)
    }
}

/// What every CPU of the target has: SSE2 on x86_64, plain code elsewhere.
struct Baseline;

#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
impl Classify for Baseline {
    #[inline(always)]
    fn classify(block: &[u8; 64]) -> Classes {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128,
            _mm_set1_epi8,
        };
        let mut classes = Classes::default();
        for (i, lane) in block.chunks_exact(16).enumerate() {
            // SAFETY: SSE2 is enabled (the cfg above; every x86_64 CPU has it). The load reads
            // the 16 bytes of `lane`, unaligned loads allowed.
            let [backslash, quote, open, close] = unsafe {
                let v = _mm_loadu_si128(lane.as_ptr().cast::<__m128i>());
                // `[` | 0x20 == `{` and `]` | 0x20 == `}`; no other byte maps to either.
                let folded = _mm_or_si128(v, _mm_set1_epi8(0x20));
                [
                    _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8)),
                    _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8)),
                    _mm_cmpeq_epi8(folded, _mm_set1_epi8(b'{' as i8)),
                    _mm_cmpeq_epi8(folded, _mm_set1_epi8(b'}' as i8)),
                ]
                .map(|mask| u64::from(_mm_movemask_epi8(mask) as u16))
            };
            classes.add(16 * i, [backslash, quote, open, close]);
        }
        classes
    }
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
impl Classify for Baseline {
    #[inline(always)]
    fn classify(block: &[u8; 64]) -> Classes {
        Portable::classify(block)
    }
}

/// 32 bytes at a time; only reached from the `*_avx2` functions, run after the CPU was found
/// to have AVX2.
#[cfg(target_arch = "x86_64")]
struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Classify for Avx2 {
    #[inline(always)]
    fn classify(block: &[u8; 64]) -> Classes {
        use std::arch::x86_64::{
            __m256i, _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_movemask_epi8, _mm256_or_si256,
            _mm256_set1_epi8,
        };
        let mut classes = Classes::default();
        for (i, lane) in block.chunks_exact(32).enumerate() {
            // SAFETY: inlined only into the `*_avx2` functions, which run once the CPU was
            // found to have AVX2. The load reads the 32 bytes of `lane`, unaligned allowed.
            let [backslash, quote, open, close] = unsafe {
                let v = _mm256_loadu_si256(lane.as_ptr().cast::<__m256i>());
                let folded = _mm256_or_si256(v, _mm256_set1_epi8(0x20));
                [
                    _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'\\' as i8)),
                    _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'"' as i8)),
                    _mm256_cmpeq_epi8(folded, _mm256_set1_epi8(b'{' as i8)),
                    _mm256_cmpeq_epi8(folded, _mm256_set1_epi8(b'}' as i8)),
                ]
                .map(|mask| u64::from(_mm256_movemask_epi8(mask) as u32))
            };
            classes.add(32 * i, [backslash, quote, open, close]);
        }
        classes
    }

    /// A carry-less multiplication by all ones is a prefix XOR (simdjson's way).
    #[inline(always)]
    fn prefix_xor(x: u64) -> u64 {
        use std::arch::x86_64::{_mm_clmulepi64_si128, _mm_cvtsi128_si64, _mm_set_epi64x};
        // SAFETY: inlined only into the `*_avx2` functions, which run once the CPU was found
        // to have PCLMULQDQ.
        unsafe {
            let product =
                _mm_clmulepi64_si128(_mm_set_epi64x(0, x as i64), _mm_set_epi64x(0, -1), 0);
            _mm_cvtsi128_si64(product) as u64
        }
    }
}

/// A byte at a time: other targets, and the reference the tests hold the others to.
#[cfg_attr(all(target_arch = "x86_64", target_feature = "sse2"), allow(dead_code))]
struct Portable;

impl Classify for Portable {
    fn classify(block: &[u8; 64]) -> Classes {
        let mut classes = Classes::default();
        for (i, byte) in block.iter().enumerate() {
            let bit = 1u64 << i;
            match byte {
                b'\\' => classes.backslash |= bit,
                b'"' => classes.quote |= bit,
                b'[' | b'{' => classes.open |= bit,
                b']' | b'}' => classes.close |= bit,
                _ => {}
            }
        }
        classes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Both scans a byte at a time. Like the block scans (and simdjson), a backslash escapes
    /// the next byte wherever it is; that matters only for invalid JSON.
    fn reference(bytes: &[u8], from: usize, in_string: bool) -> Option<usize> {
        let (mut depth, mut in_string, mut escaped) = (1u32, in_string, false);
        let string = in_string;
        for (at, &byte) in bytes.iter().enumerate().skip(from) {
            let was_escaped = escaped;
            escaped = byte == b'\\' && !was_escaped;
            if byte == b'"' && !was_escaped {
                if string {
                    return Some(at);
                }
                in_string = !in_string;
            } else if !in_string {
                match byte {
                    b'[' | b'{' => depth += 1,
                    b']' | b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(at);
                        }
                    }
                    _ => {}
                }
            }
        }
        None
    }

    #[test]
    fn finds_the_end_of_strings_and_containers() {
        let doc = br#"{"a":"x\"}","b":[1,{"c":"]"}],"d":"\\"}  "#;
        assert_eq!(container_end(doc, 1), Some(doc.len() - 3));
        assert_eq!(string_end(doc, 6), Some(10));
        assert_eq!(string_end(br#""\\\\\"x""#, 1), Some(8));
        assert_eq!(container_end(b"[[]", 1), None);
        assert_eq!(string_end(b"\"abc", 1), None);
        assert_eq!(container_end(b"[", 5), None);
        // Across block boundaries: an escape run, a string and the close all straddle them.
        let long = format!(
            "[\"{}\\\\\\\"{}\",[{}]]",
            "x".repeat(61),
            "]".repeat(70),
            "[]".repeat(40)
        );
        assert_eq!(container_end(long.as_bytes(), 1), Some(long.len() - 1));
        let deep = "[".repeat(1 << 20) + &"]".repeat(1 << 20);
        assert_eq!(container_end(deep.as_bytes(), 1), Some(deep.len() - 1));
    }

    #[test]
    fn string_stops_find_quotes_backslashes_and_control_characters() {
        for byte in 0..=255u8 {
            for at in 0..8 {
                let mut word = *b"abcdefgh";
                word[at] = byte;
                let special = is_string_stop(byte);
                let stops = string_stops(u64::from_le_bytes(word));
                let first = (stops != 0).then(|| stops.trailing_zeros() / 8);
                assert_eq!(first, special.then_some(at as u32), "{byte} at {at}");
                // Bytes before a special one never hide it.
                word[7] = b'"';
                let stops = string_stops(u64::from_le_bytes(word));
                let expected = if special { at as u32 } else { 7 };
                assert_eq!(
                    stops.trailing_zeros() / 8,
                    expected,
                    "{byte} at {at}, quote at 7"
                );
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "pclmulqdq")]
    fn prefix_xor_clmul(x: u64) -> u64 {
        <Avx2 as Classify>::prefix_xor(x)
    }

    #[test]
    fn ascii_is_told_from_the_rest() {
        for len in [0, 1, 31, 127, 128, 129, 300] {
            let mut bytes = vec![b'a'; len];
            assert!(is_ascii(&bytes), "{len}");
            for at in [0, len / 2, len.saturating_sub(1)] {
                if at < len {
                    bytes[at] = 0x80;
                    assert!(!is_ascii(&bytes), "{len} {at}");
                    bytes[at] = b'a';
                }
            }
        }
    }

    fn json_like() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                6 => proptest::sample::select(b"[]{}\"\\\\ax,:".to_vec()),
                1 => any::<u8>(),
            ],
            0..300,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn block_scans_agree_with_a_byte_at_a_time_scan(bytes in json_like(), from in 0usize..8) {
            prop_assert_eq!(container_end(&bytes, from), reference(&bytes, from, false));
            prop_assert_eq!(string_end(&bytes, from), reference(&bytes, from, true));
        }

        #[test]
        fn simd_classes_match_the_portable_ones(bytes in proptest::collection::vec(any::<u8>(), 64)) {
            let block: &[u8; 64] = bytes.as_slice().try_into().unwrap();
            let portable = Portable::classify(block);
            prop_assert_eq!(Baseline::classify(block), portable);
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                prop_assert_eq!(Avx2::classify(block), portable);
            }
        }

        #[test]
        fn string_stop_is_the_first_quote_backslash_or_control_character(
            bytes in proptest::collection::vec(prop_oneof![20 => b'a'..=b'z', 1 => any::<u8>()], 0..100),
            from in 0usize..110,
        ) {
            let expected = (from..bytes.len())
                .find(|&i| is_string_stop(bytes[i]))
                .unwrap_or(bytes.len());
            prop_assert_eq!(string_stop(&bytes, from), expected);
        }

        #[test]
        fn carry_less_prefix_xor_is_the_shifted_one(x in any::<u64>()) {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("pclmulqdq") {
                // SAFETY: the CPU has PCLMULQDQ.
                let clmul = unsafe { prefix_xor_clmul(x) };
                prop_assert_eq!(clmul, prefix_xor(x));
            }
        }

        #[test]
        fn is_ascii_agrees_with_std(bytes in proptest::collection::vec(prop_oneof![9 => 0u8..0x80, 1 => any::<u8>()], 0..400)) {
            prop_assert_eq!(is_ascii(&bytes), bytes.is_ascii());
        }

        /// The baseline scans, whichever one `string_end`/`container_end` dispatch to.
        #[test]
        fn baseline_scans_agree_with_a_byte_at_a_time_scan(bytes in json_like(), from in 0usize..8) {
            prop_assert_eq!(container_end_with::<Baseline>(&bytes, from), reference(&bytes, from, false));
            prop_assert_eq!(string_end_with::<Baseline>(&bytes, from), reference(&bytes, from, true));
        }
    }
}
