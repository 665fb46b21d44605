//! What the lookalike scan reads of an address, computed once.
//!
//! Scoring compares every recipient the sender never wrote to with each of
//! the sender's contacts (typos, homoglyphs, the wrong domain), and every
//! known recipient with the contacts sharing its first letters
//! (autocomplete siblings). Most contacts are ruled out by a few bit masks
//! and lengths: the graph keeps them per address in a [`Sketch`], built when
//! the address is interned or its graph is loaded (and reset when it is
//! erased), so that the scan neither re-derives them per
//! message nor reads the address itself for a contact it rules out.

use crate::address::{domain_of, local_of};

/// The lookalike scan's summary of one address (40 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sketch {
    /// [`bucket_mask`] of the address.
    pub mask: u64,
    /// [`bigram_mask`] of the address.
    pub bigrams: u64,
    /// [`nibble_histogram`] of the address.
    pub hist16: u64,
    /// [`skeleton_hash`] of the address.
    pub skel: u64,
    /// [`address_pack3`] of the address.
    pub pre3: u32,
    /// The address's length in bytes, saturating at `u16::MAX`.
    pub len: u16,
    /// Its local part's length (up to the last `@`), saturating at
    /// `u16::MAX`.
    pub local_len: u16,
}

// The size the README and the memory figures state.
const _: () = assert!(std::mem::size_of::<Sketch>() == 40);

impl Sketch {
    pub fn of(addr: &str) -> Sketch {
        Sketch::with_skeleton(addr, &skeleton(addr))
    }

    /// [`Self::of`] when the caller has the address's [`skeleton`] at hand.
    pub fn with_skeleton(addr: &str, skel: &str) -> Sketch {
        let b = addr.as_bytes();
        Sketch {
            mask: bucket_mask(b),
            bigrams: bigram_mask(b),
            hist16: nibble_histogram(b),
            skel: skeleton_hash(skel),
            pre3: address_pack3(b),
            len: saturate(b.len()),
            local_len: saturate(local_of(addr).len()),
        }
    }
}

/// A length as a [`Sketch`] holds it.
pub fn saturate(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// Hash of a [`skeleton`] (64-bit FNV-1a): equal skeletons hash equal, so
/// two addresses whose sketches' hashes differ have different skeletons.
pub fn skeleton_hash(skel: &str) -> u64 {
    crate::graph::memory::key_hash(skel)
}

/// Which of 64 buckets (a byte's low six bits, as the scan's byte
/// histogram counts them) occur in `s`, one bit each.
pub(crate) fn bucket_mask(s: &[u8]) -> u64 {
    s.iter().fold(0u64, |m, &c| m | 1 << (c & 63))
}

/// A lower bound on the edit distance (and on the byte-histogram bound)
/// from two [`bucket_mask`]s: a bucket present in one string only differs
/// by at least 1 between the histograms, and an edit changes them by at
/// most 2.
pub(crate) fn mask_bound(a: u64, b: u64) -> usize {
    ((a ^ b).count_ones() as usize).div_ceil(2)
}

/// How many bytes of `s` fall in each of 16 buckets (a byte's low four
/// bits), four bits a bucket (bucket `k` in bits `4k..4k + 4`), saturating
/// at 15.
pub(crate) fn nibble_histogram(s: &[u8]) -> u64 {
    let mut counts = [0u8; 16];
    for &c in s {
        let k = usize::from(c & 15);
        counts[k] = counts[k].saturating_add(1);
    }
    counts
        .iter()
        .enumerate()
        .fold(0, |h, (k, &n)| h | u64::from(n.min(15)) << (4 * k))
}

/// A lower bound on the edit distance of two strings from their
/// [`nibble_histogram`]s: an edit changes the counts by at most 2 in all (a
/// substitution moves one byte between buckets), so the distance is at
/// least half the counts' total difference; merging buckets and saturating
/// counts only shrink that difference, so this never exceeds the 64-bucket
/// byte-histogram bound either.
pub(crate) fn histogram_bound(a: u64, b: u64) -> usize {
    const LO: u64 = 0x0F0F_0F0F_0F0F_0F0F;
    let l1 = l1_bytes(a & LO, b & LO) + l1_bytes((a >> 4) & LO, (b >> 4) & LO);
    l1.div_ceil(2)
}

/// The sum of the byte-wise absolute differences of two words whose bytes
/// are all below 16, within the word: each byte of `(x | H) - y` is
/// `128 + x - y` (no byte borrows from the next), its top bit tells which
/// is larger, and the low seven bits of it or of `(y | H) - x` are the
/// difference.
fn l1_bytes(x: u64, y: u64) -> usize {
    const H: u64 = 0x8080_8080_8080_8080;
    let t1 = (x | H) - y;
    let t2 = (y | H) - x;
    let x_ge = ((t1 & H) >> 7) * 0xFF;
    let diff = ((t1 & x_ge) | (t2 & !x_ge)) & !H;
    // At most 8 * 15 in all: the top byte of the product is the sum.
    (diff.wrapping_mul(0x0101_0101_0101_0101) >> 56) as usize
}

/// Which of 64 hash buckets the byte pairs (bigrams) of `s` fall in, one
/// bit each.
pub(crate) fn bigram_mask(s: &[u8]) -> u64 {
    s.windows(2).fold(0u64, |m, w| {
        let h = u32::from(u16::from_le_bytes([w[0], w[1]])).wrapping_mul(0x9E37_79B1);
        m | 1 << (h >> 26)
    })
}

/// Whether two [`bigram_mask`]s show an edit distance above 2: one edit
/// changes at most 6 bigrams (a transposition `pabq` -> `pbaq` removes 3
/// and adds 3; a substitution 4; an insertion or deletion 3), so two
/// strings within 2 edits differ in at most 12 bigrams, and every bit set
/// in one mask only comes from one of those.
pub(crate) fn bigrams_rule_out_2(a: u64, b: u64) -> bool {
    (a ^ b).count_ones() > 12
}

/// The packed 3-byte local-part prefix ([`pack3`]) of an address: the
/// first three bytes when none of them is `@` (the local part, up to the
/// last `@`, is then at least that long), else from the local part.
pub(crate) fn address_pack3(addr: &[u8]) -> u32 {
    match addr {
        [a, b, c, ..] if *a != b'@' && *b != b'@' && *c != b'@' => pack3(addr),
        _ => {
            let l = addr.iter().rposition(|&c| c == b'@').unwrap_or(addr.len());
            pack3(&addr[..l])
        }
    }
}

/// The first three bytes of a local part packed into one word (with a
/// marker bit), or 0 when it is shorter than three bytes: two non-zero
/// words are equal exactly when both parts have three bytes or more and
/// the same first three (what the sibling feature compares).
pub(crate) fn pack3(local: &[u8]) -> u32 {
    match local {
        [a, b, c, ..] => 1 << 24 | u32::from(*a) | u32::from(*b) << 8 | u32::from(*c) << 16,
        _ => 0,
    }
}

/// Skeleton of an address for homoglyph comparison: lower-case, common
/// look-alike characters folded (`0`->`o`, `1`/`i`->`l`, `rn`->`m`, `vv`->`w`,
/// Cyrillic and Greek look-alikes to Latin), and `.`, `_`, `-` dropped from
/// the local part.
pub fn skeleton(addr: &str) -> String {
    if addr.is_ascii() {
        return skeleton_ascii(addr.as_bytes());
    }
    let local = local_of(addr);
    let domain = domain_of(addr);
    let mut out = String::with_capacity(addr.len());
    fold_into(&mut out, local, true);
    out.push('@');
    fold_into(&mut out, domain, false);
    out
}

/// [`skeleton`] for ASCII addresses in one pass.
fn skeleton_ascii(b: &[u8]) -> String {
    let at = b.iter().rposition(|&c| c == b'@').unwrap_or(b.len());
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    for (i, &c) in b.iter().enumerate() {
        let in_local = i < at;
        let c = match c.to_ascii_lowercase() {
            b'0' => b'o',
            b'1' | b'i' | b'|' => b'l',
            b'5' => b's',
            c => c,
        };
        if in_local && matches!(c, b'.' | b'_' | b'-') {
            continue;
        }
        match (out.last().copied(), c) {
            (Some(b'r'), b'n') => {
                out.pop();
                out.push(b'm');
            }
            (Some(b'v'), b'v') => {
                out.pop();
                out.push(b'w');
            }
            _ => out.push(c),
        }
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Whether `skeleton(addr) == skel`, without building the skeleton of an
/// ASCII `addr` (stops at the first byte that differs).
pub(crate) fn skeleton_is(addr: &str, skel: &str) -> bool {
    let b = addr.as_bytes();
    let want = skel.as_bytes();
    // Where the local part ends (the last `@`), found only when a
    // punctuation byte needs it: most comparisons end at the first bytes.
    let mut at: Option<usize> = None;
    // The last output byte is held back while the next input byte may
    // still merge with it (`rn` -> `m`, `vv` -> `w`), as in skeleton_ascii.
    let mut held: Option<u8> = None;
    let mut k = 0usize;
    let mut emit = |c: u8| {
        let ok = want.get(k) == Some(&c);
        k += 1;
        ok
    };
    for (i, &c) in b.iter().enumerate() {
        if !c.is_ascii() {
            // Bytes emitted so far are the ASCII fold's, which the full
            // (Unicode) skeleton shares; from here on it differs.
            return skeleton(addr) == skel;
        }
        let c = match c.to_ascii_lowercase() {
            b'0' => b'o',
            b'1' | b'i' | b'|' => b'l',
            b'5' => b's',
            c => c,
        };
        if matches!(c, b'.' | b'_' | b'-')
            && i < *at.get_or_insert_with(|| b.iter().rposition(|&c| c == b'@').unwrap_or(b.len()))
        {
            continue;
        }
        held = match (held, c) {
            (Some(b'r'), b'n') => Some(b'm'),
            (Some(b'v'), b'v') => Some(b'w'),
            (Some(h), c) => {
                if !emit(h) {
                    return false;
                }
                Some(c)
            }
            (None, c) => Some(c),
        };
    }
    if let Some(h) = held {
        if !emit(h) {
            return false;
        }
    }
    k == want.len()
}

fn fold_into(out: &mut String, s: &str, drop_punct: bool) {
    let start = out.len();
    for c in s.chars().flat_map(char::to_lowercase) {
        let c = match c {
            '0' | 'о' | 'ο' => 'o',
            '1' | 'i' | 'ı' | 'і' | 'ӏ' | 'ι' | '|' => 'l',
            'а' | 'α' => 'a',
            'е' | 'ε' => 'e',
            'р' | 'ρ' => 'p',
            'с' => 'c',
            'х' | 'χ' => 'x',
            'у' => 'y',
            'ѕ' | '5' => 's',
            'ԁ' => 'd',
            'ν' => 'v',
            c => c,
        };
        if drop_punct && matches!(c, '.' | '_' | '-') {
            continue;
        }
        out.push(c);
    }
    let folded = out[start..].replace("rn", "m").replace("vv", "w");
    out.truncate(start);
    out.push_str(&folded);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::testutil::{xorshift, xorshift_below};

    /// The word-parallel bound equals the bucket-by-bucket one.
    #[test]
    fn histogram_bound_matches_counting_bucket_by_bucket() {
        let mut below = xorshift_below(0x5eed);
        let alphabet = b"aq0@.Zp1\x7f\xc3\x10";
        for _ in 0..20_000 {
            let mut s = [Vec::new(), Vec::new()];
            for v in &mut s {
                let len = below(40);
                *v = (0..len).map(|_| alphabet[below(alphabet.len())]).collect();
            }
            let count = |v: &[u8], k: u8| v.iter().filter(|&&c| c & 15 == k).count().min(15);
            let l1: usize = (0..16u8)
                .map(|k| count(&s[0], k).abs_diff(count(&s[1], k)))
                .sum();
            let (a, b) = (nibble_histogram(&s[0]), nibble_histogram(&s[1]));
            assert_eq!(histogram_bound(a, b), l1.div_ceil(2), "{s:?}");
            assert_eq!(histogram_bound(a, a), 0);
        }
        // Arbitrary words with bytes below 16 (the lanes' extremes).
        const LO: u64 = 0x0F0F_0F0F_0F0F_0F0F;
        let mut next = xorshift(0xfeed);
        for _ in 0..20_000 {
            let (x, y) = (next() & LO, next() & LO);
            let want: usize = (0..8)
                .map(|i| usize::from(((x >> (8 * i)) as u8).abs_diff((y >> (8 * i)) as u8)))
                .sum();
            assert_eq!(l1_bytes(x, y), want);
        }
        assert_eq!(l1_bytes(LO, 0), 120);
        assert_eq!(l1_bytes(0, LO), 120);
    }

    #[test]
    fn sketch_of_an_address() {
        let k = Sketch::of("Bob.Smith@Example.com");
        assert_eq!(k.len, 21);
        assert_eq!(k.local_len, 9);
        assert_eq!(k.pre3, pack3(b"Bob"));
        assert_eq!(k.mask, bucket_mask(b"Bob.Smith@Example.com"));
        assert_eq!(k.skel, skeleton_hash(&skeleton("Bob.Smith@Example.com")));
        assert_eq!(k.skel, Sketch::of("b0bsmith@example.com").skel);
        assert_eq!(Sketch::of(&"x".repeat(70_000)).len, u16::MAX);
        assert_eq!(Sketch::of("bob").local_len, 3);
        assert_eq!(Sketch::of(""), Sketch::of(""));
        assert_eq!(Sketch::of("").len, 0);
    }
}
