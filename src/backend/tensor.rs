//! Views of executor buffers with a shape: how a described op ([`super::ops`]) names its
//! operands.
//!
//! A [`Tensor`] (read) or [`TensorMut`] (written) is `shape.len()` contiguous row-major
//! elements of one buffer from element `off`. The buffer is the executor's own type (a host
//! `Vec`, a device slice); a view only records where the tensor sits and what shape it has, so
//! the op that takes it can check its shape rule once, before any executor runs it.

use std::fmt;

use anyhow::{bail, Result};

/// Dimensions of a row-major tensor, outermost first (rank 1 to 4).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    dims: [usize; 4],
    rank: usize,
}

impl Shape {
    /// The shape `dims`: 1 to 4 of them. Shapes are written in the code, never read from input,
    /// so another rank is a programming error and panics rather than being cut silently.
    pub fn new(dims: &[usize]) -> Shape {
        assert!(
            (1..=4).contains(&dims.len()),
            "a tensor shape has 1 to 4 dimensions, got {}",
            dims.len()
        );
        let mut d = [1; 4];
        d[..dims.len()].copy_from_slice(dims);
        Shape {
            dims: d,
            rank: dims.len(),
        }
    }

    /// The dimensions, outermost first.
    pub fn dims(&self) -> &[usize] {
        &self.dims[..self.rank]
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.dims().iter().product()
    }

    /// Whether it holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(d: [usize; N]) -> Shape {
        Shape::new(&d)
    }
}

impl fmt::Display for Shape {
    /// `16384×2048`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.dims().iter().enumerate() {
            if i > 0 {
                write!(f, "×")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{self}]")
    }
}

/// A read-only tensor: `shape.len()` elements of `buf` from element `off`.
#[derive(Debug)]
pub struct Tensor<'a, B: ?Sized> {
    /// The whole buffer.
    pub buf: &'a B,
    /// First element.
    pub off: usize,
    /// Its shape.
    pub shape: Shape,
}

impl<B: ?Sized> Clone for Tensor<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: ?Sized> Copy for Tensor<'_, B> {}

impl<'a, B: ?Sized> Tensor<'a, B> {
    /// The front of `buf`, shaped `shape`.
    pub fn new(buf: &'a B, shape: impl Into<Shape>) -> Self {
        Tensor {
            buf,
            off: 0,
            shape: shape.into(),
        }
    }

    /// The elements from `off` of `buf`, shaped `shape`.
    pub fn at(buf: &'a B, off: usize, shape: impl Into<Shape>) -> Self {
        Tensor {
            buf,
            off,
            shape: shape.into(),
        }
    }

    /// Its element range in the buffer.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.off..self.off + self.shape.len()
    }
}

/// A written tensor: `shape.len()` elements of `buf` from element `off`.
#[derive(Debug)]
pub struct TensorMut<'a, B: ?Sized> {
    /// The whole buffer.
    pub buf: &'a mut B,
    /// First element.
    pub off: usize,
    /// Its shape.
    pub shape: Shape,
}

impl<'a, B: ?Sized> TensorMut<'a, B> {
    /// The front of `buf`, shaped `shape`.
    pub fn new(buf: &'a mut B, shape: impl Into<Shape>) -> Self {
        TensorMut {
            buf,
            off: 0,
            shape: shape.into(),
        }
    }

    /// Its element range in the buffer.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.off..self.off + self.shape.len()
    }
}

/// Errors unless the tensor `what` of an op fits in a buffer of `have` elements.
pub(crate) fn check_fits(
    op: &str,
    what: &str,
    range: std::ops::Range<usize>,
    have: usize,
) -> Result<()> {
    if range.end > have {
        bail!(
            "{op}: {what} needs elements {}..{} but its buffer holds {have}",
            range.start,
            range.end
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_count_and_print_their_elements() {
        let s = Shape::from([4, 3, 2]);
        assert_eq!(
            (s.len(), s.dims(), s.to_string()),
            (24, &[4, 3, 2][..], "4×3×2".into())
        );
        assert_eq!(Shape::from([7]).len(), 7);
        let buf = vec![0f32; 30];
        let t = Tensor::at(&buf, 6, [4, 6]);
        assert_eq!(t.range(), 6..30);
        assert!(check_fits("op", "x", t.range(), buf.len()).is_ok());
        let err = check_fits("op", "x", Tensor::at(&buf, 7, [4, 6]).range(), 30).unwrap_err();
        assert!(
            format!("{err}").contains("op: x needs elements 7..31"),
            "{err}"
        );
    }
}
