//! The element types a CPU KV cache can keep keys and values in.

use half::f16;
use half::slice::HalfFloatSliceExt;

/// A cache element the CPU attention reads as f32.
pub trait KvElement: Copy + Default + Send + Sync + 'static {
    /// `src` as f32: `src` itself, or its values converted into `buf` (at least as long).
    fn read<'a>(src: &'a [Self], buf: &'a mut [f32]) -> &'a [f32];
    /// Writes f32 values into `dst` (as long as `src`), rounding where the type is narrower.
    fn write(src: &[f32], dst: &mut [Self]);
}

impl KvElement for f32 {
    fn read<'a>(src: &'a [Self], _: &'a mut [f32]) -> &'a [f32] {
        src
    }

    fn write(src: &[f32], dst: &mut [Self]) {
        dst.copy_from_slice(src);
    }
}

/// Half the bytes of f32 (so half the memory traffic of attention, which reads every cached
/// row of a sequence at every step), converted with F16C where the build has it.
impl KvElement for f16 {
    fn read<'a>(src: &'a [Self], buf: &'a mut [f32]) -> &'a [f32] {
        let buf = &mut buf[..src.len()];
        src.convert_to_f32_slice(buf);
        buf
    }

    fn write(src: &[f32], dst: &mut [Self]) {
        dst.convert_from_f32_slice(src);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_round_trips_values_it_can_hold() {
        let values = [0.0f32, 1.5, -2.25, 1024.0, 0.000061035156];
        let mut stored = [f16::ZERO; 5];
        f16::write(&values, &mut stored);
        let mut buf = [0.0; 8];
        assert_eq!(f16::read(&stored, &mut buf), values);
    }
}
