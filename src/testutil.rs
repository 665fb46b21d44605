//! Helpers shared by the unit tests.

/// A xorshift64 generator started at `seed` (not zero): the same numbers on
/// every run, with no dependency.
pub(crate) fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

/// [`xorshift`]'s numbers taken modulo the argument (which is not zero).
pub(crate) fn xorshift_below(seed: u64) -> impl FnMut(usize) -> usize {
    let mut next = xorshift(seed);
    move |n| (next() % n as u64) as usize
}
