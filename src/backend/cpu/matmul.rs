//! The three GEMMs of a linear layer `y = x · Wᵀ` (x `[m, k]`, W `[n, k]` row-major, y `[m, n]`),
//! through [`Float::gemm`] (each output element summed over k in a fixed order: deterministic).

use crate::backend::Float;

/// `y[m, n] = x[m, k] · W[n, k]ᵀ` (overwrite).
pub fn forward<T: Float>(y: &mut [T], x: &[T], w: &[T], m: usize, k: usize, n: usize) {
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: shapes checked by the caller (slices of exactly m·n, m·k, n·k); y is a distinct
    // &mut slice so it aliases neither input.
    unsafe {
        T::gemm(
            m,
            k,
            n,
            T::one(),
            x.as_ptr(),
            k as isize,
            1,
            w.as_ptr(),
            1,
            k as isize,
            T::zero(),
            y.as_mut_ptr(),
            n as isize,
            1,
        )
    }
}

/// `dx[m, k] = dy[m, n] · W[n, k]` (overwrite).
pub fn backward_x<T: Float>(dx: &mut [T], dy: &[T], w: &[T], m: usize, k: usize, n: usize) {
    if m == 0 || k == 0 {
        return;
    }
    // SAFETY: as in `forward`.
    unsafe {
        T::gemm(
            m,
            n,
            k,
            T::one(),
            dy.as_ptr(),
            n as isize,
            1,
            w.as_ptr(),
            k as isize,
            1,
            T::zero(),
            dx.as_mut_ptr(),
            k as isize,
            1,
        )
    }
}

/// `dW[n, k] (+)= dy[m, n]ᵀ · x[m, k]`; accumulates when `accumulate`.
pub fn backward_w<T: Float>(
    dw: &mut [T],
    dy: &[T],
    x: &[T],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    if n == 0 || k == 0 {
        return;
    }
    let beta = if accumulate { T::one() } else { T::zero() };
    // SAFETY: as in `forward`.
    unsafe {
        T::gemm(
            n,
            m,
            k,
            T::one(),
            dy.as_ptr(),
            1,
            n as isize,
            x.as_ptr(),
            k as isize,
            1,
            beta,
            dw.as_mut_ptr(),
            k as isize,
            1,
        )
    }
}
