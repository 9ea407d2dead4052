//! Writing new keys and values into a paged cache: the CPU path, and the reference for the
//! CUDA `migserve_kv_write_bf16` kernel.

/// Copies row `i` of `rows` (rows of `kv_row` values) to cache row `slots[i]`.
///
/// # Panics
/// When `rows` holds fewer than `slots.len()` rows or a slot lies outside `cache`: callers
/// compute slots from the same block manager that sized the cache.
pub fn write_rows<T: Copy>(rows: &[T], slots: &[u32], kv_row: usize, cache: &mut [T]) {
    write_rows_with(rows, slots, kv_row, cache, <[T]>::copy_from_slice)
}

/// [`write_rows`] with each row stored by `put(cache_row, row)`: a conversion on the way,
/// such as [`KvElement::write`](super::kv_element::KvElement::write) into an f16 cache.
///
/// # Panics
/// As [`write_rows`].
pub fn write_rows_with<S, T>(
    rows: &[S],
    slots: &[u32],
    kv_row: usize,
    cache: &mut [T],
    put: impl Fn(&mut [T], &[S]),
) {
    for (i, &slot) in slots.iter().enumerate() {
        let dst = slot as usize * kv_row;
        put(
            &mut cache[dst..dst + kv_row],
            &rows[i * kv_row..(i + 1) * kv_row],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_land_in_their_slots() {
        let mut cache = vec![0u8; 5 * 2];
        write_rows(&[1, 2, 3, 4], &[4, 1], 2, &mut cache);
        assert_eq!(cache, [0, 0, 3, 4, 0, 0, 0, 0, 1, 2]);
    }
}
