//! Reductions over a slice in 8 independent lanes, which the compiler turns into 8-wide SIMD
//! (a plain `iter().sum()` is one serial chain: floating-point adds may not be reordered).

/// `Σ f(v)` over `values`: lane `j` sums elements `j, j + 8, ...`, then the lanes and the
/// tail are added.
#[inline(always)]
pub fn sum_lanes(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let (chunks, rest) = values.as_chunks::<8>();
    let mut acc = [0.0f32; 8];
    for c in chunks {
        for j in 0..8 {
            acc[j] += f(c[j]);
        }
    }
    acc.iter().sum::<f32>() + rest.iter().map(|v| f(*v)).sum::<f32>()
}

/// The largest value, NaNs skipped (`-inf` for an empty slice).
#[inline(always)]
pub fn max_lanes(values: &[f32]) -> f32 {
    let (chunks, rest) = values.as_chunks::<8>();
    let mut lanes = [f32::NEG_INFINITY; 8];
    for c in chunks {
        for j in 0..8 {
            lanes[j] = lanes[j].max(c[j]);
        }
    }
    rest.iter()
        .chain(&lanes)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_cover_every_element_and_the_tail() {
        let v: Vec<f32> = (1..=21).map(|i| i as f32).collect();
        assert_eq!(sum_lanes(&v, |x| x), 231.0);
        assert_eq!(sum_lanes(&v, |x| x * x), 3311.0);
        assert_eq!(max_lanes(&v), 21.0);
        assert_eq!(max_lanes(&[1.0, f32::NAN, 3.0]), 3.0);
        assert_eq!(max_lanes(&[]), f32::NEG_INFINITY);
    }
}
