//! Keyed requests (load mode): a request template with `{key}` and
//! `{value}` placeholders, and the uniform choice of a key per request.
//!
//! `{value}` becomes a fixed value of `--value-size` bytes once, when the
//! template is read. `{key}` becomes a key index in `0..--keys`, written in
//! decimal and zero-padded to the width of the largest index (with
//! `--keys 100000`: `00000` to `99999`), so every request of a template has
//! the same length; rendering one is a copy of the template and the key's
//! digits written over its placeholders, into a buffer the caller reuses:
//! no allocation per request.

/// The key placeholder.
pub const KEY: &[u8] = b"{key}";
/// The value placeholder.
pub const VALUE: &[u8] = b"{value}";

/// The byte every `{value}` is made of.
pub const VALUE_BYTE: u8 = b'v';

/// Longest decimal `u64`.
const MAX_DIGITS: usize = 20;

/// A request with its placeholders resolved: the value written in, the
/// keys' places known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// The request with every `{value}` replaced by the value and every
    /// `{key}` by `width` zeros (the request for key 0).
    base: Vec<u8>,
    /// Where each key's digits start in `base`.
    key_offsets: Vec<usize>,
    /// Digits of every key: those of the largest key index.
    width: usize,
}

impl Template {
    /// Reads `request` (line ending included), with keys drawn from
    /// `0..keys` and `value_size` bytes of value.
    pub fn new(request: &[u8], keys: u64, value_size: usize) -> Template {
        let width = decimal_width(keys.saturating_sub(1));
        let mut base = Vec::with_capacity(request.len());
        let mut key_offsets = Vec::new();
        let mut rest = request;
        while let Some((&first, tail)) = rest.split_first() {
            if rest.starts_with(KEY) {
                key_offsets.push(base.len());
                base.resize(base.len() + width, b'0');
                rest = &rest[KEY.len()..];
            } else if rest.starts_with(VALUE) {
                base.resize(base.len() + value_size, VALUE_BYTE);
                rest = &rest[VALUE.len()..];
            } else {
                base.push(first);
                rest = tail;
            }
        }
        Template {
            base,
            key_offsets,
            width,
        }
    }

    /// Whether the requests differ by key (the template has a `{key}`).
    pub fn is_keyed(&self) -> bool {
        !self.key_offsets.is_empty()
    }

    /// The length of every request.
    pub fn len(&self) -> usize {
        self.base.len()
    }

    /// The request for key 0 (the request, when it has no `{key}`).
    pub fn base(&self) -> &[u8] {
        &self.base
    }

    /// Appends the request for `key` to `out`: no allocation when `out`
    /// has room for it. `key` must have at most the template's width in
    /// digits (it does when it is below the `keys` given to [`Template::new`]).
    #[inline]
    pub fn render_into(&self, key: u64, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.base);
        if self.key_offsets.is_empty() {
            return;
        }
        let digits = Digits::of(key);
        debug_assert!(
            digits.len <= self.width,
            "key {key} is wider than the template's keys"
        );
        let key_digits = digits.padded(self.width);
        for &offset in &self.key_offsets {
            let at = start + offset;
            out[at..at + self.width].copy_from_slice(key_digits);
        }
    }
}

/// A number's decimal digits, right-aligned after leading zeros.
struct Digits {
    bytes: [u8; MAX_DIGITS],
    /// Digits without the leading zeros (at least 1).
    len: usize,
}

impl Digits {
    #[inline]
    fn of(mut n: u64) -> Digits {
        let mut bytes = [b'0'; MAX_DIGITS];
        let mut i = MAX_DIGITS;
        loop {
            i -= 1;
            // n % 10 < 10: the cast is exact.
            bytes[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        Digits {
            bytes,
            len: MAX_DIGITS - i,
        }
    }

    /// The last `width` digits, zero-padded on the left.
    #[inline]
    fn padded(&self, width: usize) -> &[u8] {
        &self.bytes[MAX_DIGITS - width.min(MAX_DIGITS)..]
    }
}

/// Digits of `n` in decimal (1 for 0).
pub fn decimal_width(n: u64) -> usize {
    Digits::of(n).len
}

/// Draws key indexes uniformly from `0..keys`: SplitMix64, mapped onto the
/// range by a 64x64->128-bit multiply (Lemire), whose bias (at most
/// keys/2^64) is far below anything a run can see. A few arithmetic
/// instructions per key, no state beyond one word.
#[derive(Debug, Clone)]
pub struct KeyChooser {
    state: u64,
    keys: u64,
}

impl KeyChooser {
    /// A chooser over `0..keys` (`keys` at least 1), its sequence fixed by
    /// `seed`.
    pub fn new(keys: u64, seed: u64) -> KeyChooser {
        KeyChooser {
            state: seed,
            keys: keys.max(1),
        }
    }

    /// The next key index, in `0..keys`.
    #[inline]
    pub fn next_key(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // (z * keys) / 2^64 < keys: fits in a u64.
        ((u128::from(z) * u128::from(self.keys)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(template: &Template, key: u64) -> Vec<u8> {
        let mut out = Vec::new();
        template.render_into(key, &mut out);
        out
    }

    #[test]
    fn keys_are_zero_padded_to_the_largest_index() {
        let t = Template::new(b"GET key:{key}\n", 100_000, 64);
        assert!(t.is_keyed());
        assert_eq!(t.base(), b"GET key:00000\n");
        assert_eq!(render(&t, 0), b"GET key:00000\n");
        assert_eq!(render(&t, 42), b"GET key:00042\n");
        assert_eq!(render(&t, 99_999), b"GET key:99999\n");
        assert_eq!(t.len(), render(&t, 7).len());
        // 10 keys: one digit; 11 keys: two.
        assert_eq!(render(&Template::new(b"{key}", 10, 0), 9), b"9");
        assert_eq!(render(&Template::new(b"{key}", 11, 0), 9), b"09");
        assert_eq!(render(&Template::new(b"{key}", 1, 0), 0), b"0");
        assert_eq!(
            render(&Template::new(b"{key}", u64::MAX, 0), u64::MAX - 1),
            b"18446744073709551614"
        );
    }

    #[test]
    fn the_value_is_fixed_and_every_placeholder_is_filled() {
        let t = Template::new(b"SET k{key} {value}\r\n", 1000, 5);
        assert_eq!(render(&t, 7), b"SET k007 vvvvv\r\n");
        let t = Template::new(b"{key}-{key} {value}{value}", 100, 2);
        assert_eq!(render(&t, 5), b"05-05 vvvv");
        assert_eq!(render(&t, 99), b"99-99 vvvv");
        // RESP: with fixed-width keys the lengths are constants.
        let t = Template::new(b"*2\r\n$3\r\nGET\r\n$9\r\nkey:{key}\r\n", 100_000, 64);
        assert_eq!(
            render(&t, 12_345),
            b"*2\r\n$3\r\nGET\r\n$9\r\nkey:12345\r\n"
        );
        // An empty value; braces that are no placeholder stay.
        let t = Template::new(b"SET {key} {value}{x}{\n", 10, 0);
        assert_eq!(render(&t, 3), b"SET 3 {x}{\n");
    }

    #[test]
    fn without_a_key_every_request_is_the_same() {
        let t = Template::new(b"PING\r\n", 100_000, 64);
        assert!(!t.is_keyed());
        assert_eq!(render(&t, 5), b"PING\r\n");
        assert_eq!(t.base(), b"PING\r\n");
    }

    #[test]
    fn rendering_appends_into_the_buffer_without_growing_it() {
        let t = Template::new(b"GET key:{key}\n", 1000, 0);
        let mut out = Vec::with_capacity(3 * t.len());
        let capacity = out.capacity();
        for key in [1, 22, 333] {
            t.render_into(key, &mut out);
        }
        assert_eq!(out, b"GET key:001\nGET key:022\nGET key:333\n");
        assert_eq!(out.capacity(), capacity);
    }

    #[test]
    fn keys_stay_in_range_and_come_out_uniform() {
        let keys = 10;
        let mut chooser = KeyChooser::new(keys, 1);
        let mut counts = [0u32; 10];
        let draws = 100_000;
        for _ in 0..draws {
            let key = chooser.next_key();
            assert!(key < keys);
            counts[key as usize] += 1;
        }
        // Each bucket expects 10,000 (sd ~95): 5% off would be 5 sd.
        for (key, &n) in counts.iter().enumerate() {
            assert!((9_500..=10_500).contains(&n), "key {key} drawn {n} times");
        }
        // Chi-square with 9 degrees of freedom: 27.9 is the 0.1% tail.
        let expected = f64::from(draws) / keys as f64;
        let chi2: f64 = counts
            .iter()
            .map(|&n| (f64::from(n) - expected).powi(2) / expected)
            .sum();
        assert!(chi2 < 27.9, "chi-square {chi2}");
    }

    #[test]
    fn every_key_of_a_large_range_can_come_up() {
        let keys = 100_000;
        let mut chooser = KeyChooser::new(keys, 7);
        let mut seen = vec![false; keys as usize];
        let (mut low, mut high) = (u64::MAX, 0);
        for _ in 0..2_000_000 {
            let key = chooser.next_key();
            assert!(key < keys);
            seen[key as usize] = true;
            low = low.min(key);
            high = high.max(key);
        }
        assert_eq!((low, high), (0, keys - 1));
        // 20 draws per key: a key is missed with probability e^-20.
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn the_sequence_is_fixed_by_the_seed() {
        let draw = |seed| {
            let mut c = KeyChooser::new(1_000_000, seed);
            (0..8).map(|_| c.next_key()).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
        let mut one = KeyChooser::new(1, 9);
        assert!((0..100).all(|_| one.next_key() == 0));
        // 0 keys is taken as 1.
        assert_eq!(KeyChooser::new(0, 9).next_key(), 0);
    }
}
