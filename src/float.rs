//! The scalar types the model computes in (f32 to train, f64 for gradient checks) and the one
//! host GEMM every CPU path uses (the CPU executor's matmuls and attention, the probes' Newton
//! steps): the `gemm` crate, in a fixed order of summation.

use std::fmt::Debug;

/// Scalar type an executor computes in (f32 to train, f64 for gradient checks).
pub trait Float:
    num_traits::Float + Default + Debug + Send + Sync + std::iter::Sum + 'static
{
    /// Rounds an f64 to this type.
    fn of(x: f64) -> Self;
    /// Widens to f64.
    fn f64(self) -> f64;
    /// General matrix multiply `C = alpha·A·B + beta·C` with `A` `[m, k]`, `B` `[k, n]`, `C`
    /// `[m, n]`, each addressed by (row stride, column stride) in elements.
    ///
    /// # Safety
    /// The pointers must address matrices of the stated shapes and strides; `c` must not alias
    /// `a` or `b`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    ) {
        gemm_rayon(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
    }
}

/// [`Float::gemm`] through the `gemm` crate: `C = alpha·A·B + beta·C` (`C` only read when
/// `beta ≠ 0`).
///
/// Threads: rayon's pool when called from outside it, one thread when called from inside a rayon
/// task (the attention ops already run one task per head). Either way each element of `C` is
/// summed by one thread over `k` in the same fixed blocks (`gemm` splits only the `m × n` output
/// tiles among threads, never `k`), so the result does not depend on the thread count.
///
/// # Safety
/// As [`Float::gemm`].
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_rayon<T: 'static + num_traits::Zero + PartialEq + Copy>(
    m: usize,
    k: usize,
    n: usize,
    alpha: T,
    a: *const T,
    rsa: isize,
    csa: isize,
    b: *const T,
    rsb: isize,
    csb: isize,
    beta: T,
    c: *mut T,
    rsc: isize,
    csc: isize,
) {
    let par = if rayon::current_thread_index().is_some() {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(0)
    };
    // `gemm`'s convention: dst = alpha'·dst + beta'·lhs·rhs, (column stride, row stride) order.
    let read_dst = beta != T::zero();
    // SAFETY: forwarded from the caller (shapes, strides, no aliasing of c).
    unsafe {
        gemm::gemm(
            m, n, k, c, csc, rsc, read_dst, a, csa, rsa, b, csb, rsb, beta, alpha, false, false,
            false, par,
        )
    }
}

impl Float for f32 {
    fn of(x: f64) -> Self {
        x as f32
    }
    fn f64(self) -> f64 {
        self as f64
    }
}

impl Float for f64 {
    fn of(x: f64) -> Self {
        x
    }
    fn f64(self) -> f64 {
        self
    }
}
