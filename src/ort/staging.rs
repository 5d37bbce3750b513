//! fp32/fp16 staging of a float input and reading of a float output, shared by every graph:
//! the runtime works in f32; an fp16 graph gets its input converted into a reused buffer.

use half::f16;
use half::slice::HalfFloatSliceExt;
use ort::value::{DynValueRef, Shape, TensorRef, TensorValueTypeMarker, Value};

use crate::manifest::Precision;

#[derive(Default)]
pub struct Staging {
    half: Vec<f16>,
}

impl Staging {
    /// `values` (row-major, of `shape`) as an input tensor in the graph's precision.
    pub fn input<'a>(
        &'a mut self,
        precision: Precision,
        shape: [usize; 3],
        values: &'a [f32],
    ) -> ort::Result<DynValueRef<'a>> {
        if precision.is_half() {
            self.half.resize(values.len(), f16::ZERO);
            self.half.convert_from_f32_slice(values);
            Ok(TensorRef::from_array_view((shape, &self.half[..]))?.into_dyn())
        } else {
            Ok(TensorRef::from_array_view((shape, values))?.into_dyn())
        }
    }
}

/// Copies a float output, read in the graph's precision, into `out` (as many values as both
/// hold: the caller checks the returned shape); one memcpy at fp32 where `read_output`'s
/// element-wise walk cost ~12 k instructions a step at batch 1.
pub fn copy_output<T: TensorValueTypeMarker + ?Sized>(
    value: &Value<T>,
    precision: Precision,
    out: &mut [f32],
) -> ort::Result<Shape> {
    if precision.is_half() {
        let (shape, values) = value.try_extract_tensor::<f16>()?;
        let n = values.len().min(out.len());
        values[..n].convert_to_f32_slice(&mut out[..n]);
        Ok(shape.clone())
    } else {
        let (shape, values) = value.try_extract_tensor::<f32>()?;
        let n = values.len().min(out.len());
        out[..n].copy_from_slice(&values[..n]);
        Ok(shape.clone())
    }
}

/// Writes a float output, read in the graph's precision, into `out` in order with
/// `write(slot, value)`; returns the output's shape for the caller to check.
pub fn read_output<'o, T: TensorValueTypeMarker + ?Sized>(
    value: &Value<T>,
    precision: Precision,
    out: impl Iterator<Item = &'o mut f32>,
    write: impl Fn(&mut f32, f32),
) -> ort::Result<Shape> {
    if precision.is_half() {
        let (shape, values) = value.try_extract_tensor::<f16>()?;
        out.zip(values).for_each(|(o, v)| write(o, v.to_f32()));
        Ok(shape.clone())
    } else {
        let (shape, values) = value.try_extract_tensor::<f32>()?;
        out.zip(values).for_each(|(o, &v)| write(o, v));
        Ok(shape.clone())
    }
}
