//! `exp` for softmax, in a form the compiler turns into SIMD code (libm's `expf` is a call
//! per value).

use super::lanes::{max_lanes, sum_lanes};

const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two so that `k * LN2_HI` is exact for the `k` that occur.
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;

/// `e^x` within 2 ulp of `f32::exp` for `x` in `[-87, 88]`; outside, `x` is clamped to that
/// range (so `-inf` gives the tiny `e^-87`, negligible next to any softmax maximum's 1, and
/// large `x` the finite `e^88`).
#[inline(always)]
pub fn exp_approx(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // x = k ln2 + r with |r| <= ln2 / 2, then e^x = 2^k e^r.
    let k = (x * LOG2_E).round_ties_even();
    let r = k.mul_add(-LN2_LO, k.mul_add(-LN2_HI, x));
    // Taylor series of e^r to degree 7 (Horner): the first left-out term is below 2^-27.
    let mut p: f32 = 1.0 / 5040.0;
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p.mul_add(r, c);
    }
    // k is in [-126, 127]: 2^k is a normal float built from its exponent bits.
    p * f32::from_bits(((k as i32 + 127) as u32) << 23)
}

/// Replaces every `s` by `e^(s - max)` and returns their sum (`max` must be at least every
/// value, as in a softmax).
pub fn exp_shifted_sum(values: &mut [f32], max: f32) -> f32 {
    for v in values.iter_mut() {
        *v = exp_approx(*v - max);
    }
    sum_lanes(values, |v| v)
}

/// `ln Σ e^v` over `values` (the normalizer of a log-softmax), computed without overflow.
/// `-inf` when `values` is empty or all `-inf`; NaN inputs give NaN.
pub fn log_sum_exp(values: &[f32]) -> f32 {
    // `max` skips NaNs; a NaN then reaches the sum below and makes the result NaN.
    let max = max_lanes(values);
    if !max.is_finite() {
        return if values.iter().any(|v| v.is_nan()) {
            f32::NAN
        } else {
            max
        };
    }
    max + sum_lanes(values, |v| exp_approx(v - max)).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_libm_within_two_ulp() {
        let mut x = 0.0f32;
        while x > -87.0 {
            let (got, want) = (exp_approx(x), x.exp());
            let ulps = (got.to_bits() as i64 - want.to_bits() as i64).abs();
            assert!(ulps <= 2, "exp({x}) = {got}, libm {want} ({ulps} ulp)");
            x -= 0.0037;
        }
        assert_eq!(exp_approx(0.0), 1.0);
    }

    #[test]
    fn positive_arguments_match_libm_too() {
        let mut x = 0.0f32;
        while x < 88.0 {
            let (got, want) = (exp_approx(x), x.exp());
            let ulps = (got.to_bits() as i64 - want.to_bits() as i64).abs();
            assert!(ulps <= 2, "exp({x}) = {got}, libm {want} ({ulps} ulp)");
            x += 0.0041;
        }
        assert!(exp_approx(f32::INFINITY).is_finite());
    }

    #[test]
    fn far_below_is_negligible() {
        assert!(exp_approx(f32::NEG_INFINITY) < 1e-37);
        assert!(exp_approx(-1000.0) < 1e-37);
    }

    #[test]
    fn log_sum_exp_is_stable_and_exact_enough() {
        let big = [1000.0f32, 1000.0];
        assert!((log_sum_exp(&big) - (1000.0 + 2f32.ln())).abs() < 1e-3);
        let v: Vec<f32> = (0..49_157)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.02 - 10.0)
            .collect();
        let want = {
            let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            max + v.iter().map(|x| (*x as f64 - max).exp()).sum::<f64>().ln()
        };
        assert!((log_sum_exp(&v) as f64 - want).abs() < 1e-4);
        assert_eq!(log_sum_exp(&[]), f32::NEG_INFINITY);
        assert_eq!(log_sum_exp(&[f32::NEG_INFINITY; 9]), f32::NEG_INFINITY);
        assert!(log_sum_exp(&[0.0, f32::NAN]).is_nan());
    }

    #[test]
    fn shifted_sum_is_the_sum_of_the_exponentials() {
        let mut v: Vec<f32> = (0..21).map(|i| i as f32 * -0.5).collect();
        let want: f32 = v.iter().map(|x| (x - 0.0).exp()).sum();
        let got = exp_shifted_sum(&mut v, 0.0);
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        assert!((v[3] - (-1.5f32).exp()).abs() < 1e-7);
    }
}
