// The tensor-core matmul kernels of cuda/matmul.cu (y = x·Wᵀ, dx = dy·W, dW (+)= dyᵀ·x) run on
// the host through emu.h + mma.h, each against a plain double-precision product of the
// bf16-rounded (RNE) inputs written here. Shapes: small ragged ones (tails in m, n and k, more
// than one tile in each, more than 8 tile-rows so the grouped raster wraps), aligned ones
// (float4 path) and views offset by one element (scalar path); outputs poisoned with NaN, guard
// elements around every output must come back untouched; bwd_w with accumulate adds to a random
// prior dW; k = 0 gives zeros (or the prior unchanged). The bf16-logit variants must equal their
// fp32 twins bit for bit (check_bf16_twins), and version 2 (bf16 operand copies, cp.async
// pipeline) must equal version 1 bit for bit (check_async_twins).
// Relative error ‖out − ref‖/‖ref‖ limit 1e-5: the emulated products are exact in fp32 (bf16 x
// bf16) and only the fp32 summation order differs from the double reference. To show the limit
// bites, each fwd case also reports the error against the unrounded fp32 inputs, which must be
// far above it (the kernel must round to bf16).
// Build and run: cuda/emu/run.sh (needs g++ with C++20).
#include "emu.h"
#include "check.h"
#include <cstdio>
#include <random>
#include <algorithm>
#include "../matmul.cu"

static const float GUARD = 12345.678f;
static const int NG = 4;  // guard elements on each side of an output (16 bytes: off 0 stays aligned)

static double bf(float x) { return (double)__bfloat162float(__float2bfloat16_rn(x)); }
static double rel(const float* a, const std::vector<double>& b) {
    double d = 0, r = 0;
    for (size_t i = 0; i < b.size(); ++i) {
        if (!std::isfinite(a[i])) return 1e9;
        d += (a[i] - b[i]) * (a[i] - b[i]);
        r += b[i] * b[i];
    }
    if (r == 0) return std::sqrt(d);  // zero reference (k = 0): absolute error
    return std::sqrt(d / r);
}

// A device-like buffer: `off` leading pad elements (the view starts there), `len` payload, and
// for outputs NG guard elements on both sides.
struct Buf {
    std::vector<float> v;
    size_t off;
    float* p() { return v.data() + off; }
};
static Buf input(size_t len, size_t off) {
    Buf b{uni(len + off + 4, -1, 1), off};
    return b;
}
static Buf output(size_t len, size_t off, const std::vector<float>* prior) {
    Buf b{std::vector<float>(len + off + 2 * NG, GUARD), off + NG};
    for (size_t i = 0; i < len; ++i) b.p()[i] = prior ? (*prior)[i] : NAN;
    return b;
}
static double guards_touched(Buf& b, size_t len) {
    double bad = 0;
    for (size_t i = 0; i < b.off; ++i) bad += memcmp(&b.v[i], &GUARD, 4) != 0;
    for (size_t i = b.off + len; i < b.v.size(); ++i) bad += memcmp(&b.v[i], &GUARD, 4) != 0;
    return bad;
}
static unsigned blocks(unsigned M, unsigned N) { return ((M + 127) / 128) * ((N + 127) / 128); }

static void check_shape(unsigned m, unsigned k, unsigned n, size_t off_in, size_t off_out) {
    char name[160];
    Buf x = input((size_t)m * k, off_in), w = input((size_t)n * k, off_in);
    Buf dy = input((size_t)m * n, off_in);
    const float* X = x.p();
    const float* W = w.p();
    const float* DY = dy.p();

    // forward: y[m, n] = x · Wᵀ
    {
        Buf y = output((size_t)m * n, off_out, nullptr);
        launch({blocks(m, n)}, {256}, [&] { matmul_fwd(y.p(), X, W, m, k, n); });
        std::vector<double> ref((size_t)m * n), raw((size_t)m * n);
        for (unsigned i = 0; i < m; ++i)
            for (unsigned j = 0; j < n; ++j) {
                double s = 0, t = 0;
                for (unsigned r = 0; r < k; ++r) {
                    s += bf(X[(size_t)i * k + r]) * bf(W[(size_t)j * k + r]);
                    t += (double)X[(size_t)i * k + r] * W[(size_t)j * k + r];
                }
                ref[(size_t)i * n + j] = s;
                raw[(size_t)i * n + j] = t;
            }
        snprintf(name, 160, "fwd   m=%u k=%u n=%u off=%zu/%zu", m, k, n, off_in, off_out);
        report(name, rel(y.p(), ref), 1e-5);
        if (k >= 8) {
            snprintf(name, 160, "fwd   m=%u k=%u n=%u vs unrounded (must exceed 1e-4)", m, k, n);
            report(name, rel(y.p(), raw), 1e-4, true);
        }
        snprintf(name, 160, "fwd   m=%u k=%u n=%u guards touched", m, k, n);
        report(name, guards_touched(y, (size_t)m * n), 0.5);
    }
    // backward x: dx[m, k] = dy · W
    {
        Buf dx = output((size_t)m * k, off_out, nullptr);
        launch({blocks(m, k)}, {256}, [&] { matmul_bwd_x(dx.p(), DY, W, m, k, n); });
        std::vector<double> ref((size_t)m * k);
        for (unsigned i = 0; i < m; ++i)
            for (unsigned c = 0; c < k; ++c) {
                double s = 0;
                for (unsigned j = 0; j < n; ++j) s += bf(DY[(size_t)i * n + j]) * bf(W[(size_t)j * k + c]);
                ref[(size_t)i * k + c] = s;
            }
        snprintf(name, 160, "bwd_x m=%u k=%u n=%u off=%zu/%zu", m, k, n, off_in, off_out);
        report(name, rel(dx.p(), ref), 1e-5);
        snprintf(name, 160, "bwd_x m=%u k=%u n=%u guards touched", m, k, n);
        report(name, guards_touched(dx, (size_t)m * k), 0.5);
    }
    // backward W: dW[n, k] (+)= dyᵀ · x
    for (int acc : {0, 1}) {
        std::vector<float> prior = uni((size_t)n * k, -2, 2);
        Buf dw = output((size_t)n * k, off_out, acc ? &prior : nullptr);
        launch({blocks(n, k)}, {256}, [&] { matmul_bwd_w(dw.p(), DY, X, m, k, n, acc); });
        std::vector<double> ref((size_t)n * k);
        for (unsigned j = 0; j < n; ++j)
            for (unsigned c = 0; c < k; ++c) {
                double s = 0;
                for (unsigned i = 0; i < m; ++i) s += bf(DY[(size_t)i * n + j]) * bf(X[(size_t)i * k + c]);
                ref[(size_t)j * k + c] = s + (acc ? prior[(size_t)j * k + c] : 0.0);
            }
        snprintf(name, 160, "bwd_w m=%u k=%u n=%u off=%zu/%zu acc=%d", m, k, n, off_in, off_out, acc);
        report(name, rel(dw.p(), ref), 1e-5);
        snprintf(name, 160, "bwd_w m=%u k=%u n=%u acc=%d guards touched", m, k, n, acc);
        report(name, guards_touched(dw, (size_t)n * k), 0.5);
    }
}

// The output layer's bf16 variants against their fp32 twins on the same values, bit for bit:
// matmul_fwd_bf16 must write bf16 (RNE) of matmul_fwd's fp32 y; matmul_bwd_x_bf16 and
// matmul_bwd_w_bf16 on a bf16 dy must give exactly what matmul_bwd_x / matmul_bwd_w give on that
// dy widened to fp32 (widening is exact and the kernels round operands to bf16 anyway). Guard
// elements around every bf16 output must stay untouched. `off_h`: leading pad of the bf16
// buffers in elements (0: 16-byte aligned, vector path; 4: 8-byte aligned; 1: scalar path).
static const unsigned short GUARD_BF16 = 0x7777;
static size_t bf16_diffs(const __nv_bfloat16* a, const __nv_bfloat16* b, size_t n) {
    size_t bad = 0;
    for (size_t i = 0; i < n; ++i) bad += a[i].x != b[i].x;
    return bad;
}
static size_t float_diffs(const float* a, const float* b, size_t n) {
    size_t bad = 0;
    for (size_t i = 0; i < n; ++i) bad += memcmp(a + i, b + i, 4) != 0;
    return bad;
}
static void check_bf16_twins(unsigned m, unsigned k, unsigned n, size_t off_f, size_t off_h) {
    char name[160];
    const size_t mn = (size_t)m * n;
    Buf x = input((size_t)m * k, off_f), w = input((size_t)n * k, off_f);
    // fwd: y16 (guards around it) against bf16 of the fp32 y.
    {
        Buf y = output(mn, 0, nullptr);
        launch({blocks(m, n)}, {256}, [&] { matmul_fwd(y.p(), x.p(), w.p(), m, k, n); });
        std::vector<__nv_bfloat16> y16(mn + off_h + 2 * 8, __nv_bfloat16{GUARD_BF16});
        __nv_bfloat16* Y = y16.data() + off_h + 8;
        for (size_t i = 0; i < mn; ++i) Y[i] = __float2bfloat16_rn(NAN);
        launch({blocks(m, n)}, {256}, [&] { matmul_fwd_bf16(Y, x.p(), w.p(), m, k, n); });
        std::vector<__nv_bfloat16> want(mn);
        for (size_t i = 0; i < mn; ++i) want[i] = __float2bfloat16_rn(y.p()[i]);
        size_t guards = 0;
        for (size_t i = 0; i < y16.size(); ++i)
            if (i < off_h + 8 || i >= off_h + 8 + mn) guards += y16[i].x != GUARD_BF16;
        snprintf(name, 160, "fwd_bf16   m=%u k=%u n=%u off=%zu/%zu (bit diffs)", m, k, n, off_f, off_h);
        report(name, (double)(bf16_diffs(Y, want.data(), mn) + guards), 0.5);
    }
    // dy in bf16 (off_h leading pad), and the same values in fp32 (aligned).
    std::vector<float> dyf = uni(mn, -1, 1);
    std::vector<__nv_bfloat16> dy16(mn + off_h + 4);
    __nv_bfloat16* DY = dy16.data() + off_h;
    for (size_t i = 0; i < mn; ++i) {
        DY[i] = __float2bfloat16_rn(dyf[i]);
        dyf[i] = __bfloat162float(DY[i]);
    }
    {
        Buf a = output((size_t)m * k, 0, nullptr), b = output((size_t)m * k, off_f, nullptr);
        launch({blocks(m, k)}, {256}, [&] { matmul_bwd_x(a.p(), dyf.data(), w.p(), m, k, n); });
        launch({blocks(m, k)}, {256}, [&] { matmul_bwd_x_bf16(b.p(), DY, w.p(), m, k, n); });
        snprintf(name, 160, "bwd_x_bf16 m=%u k=%u n=%u off=%zu/%zu (bit diffs)", m, k, n, off_f, off_h);
        report(name, (double)(float_diffs(a.p(), b.p(), (size_t)m * k) + guards_touched(b, (size_t)m * k)), 0.5);
    }
    for (int acc : {0, 1}) {
        std::vector<float> prior = uni((size_t)n * k, -2, 2);
        Buf a = output((size_t)n * k, 0, acc ? &prior : nullptr);
        Buf b = output((size_t)n * k, off_f, acc ? &prior : nullptr);
        launch({blocks(n, k)}, {256}, [&] { matmul_bwd_w(a.p(), dyf.data(), x.p(), m, k, n, acc); });
        launch({blocks(n, k)}, {256}, [&] { matmul_bwd_w_bf16(b.p(), DY, x.p(), m, k, n, acc); });
        snprintf(name, 160, "bwd_w_bf16 m=%u k=%u n=%u off=%zu/%zu acc=%d (bit diffs)", m, k, n, off_f, off_h, acc);
        report(name, (double)(float_diffs(a.p(), b.p(), (size_t)n * k) + guards_touched(b, (size_t)n * k)), 0.5);
    }
}

// Version 2 (the *_async kernels on bf16 copies made by matmul_to_bf16) against version 1,
// bit for bit: the same products of the same bf16 values in the same order. Operand copies
// have their leading dimension padded to a multiple of 8 (`pad` more: 0 or 8), the padding
// poisoned with NaN after the copy (a kernel that reads it fails), and the bf16
// logits case reads a bf16 dy directly (n a multiple of 8). Guards around outputs as above.
struct B16 {  // a 16-byte-aligned bf16 buffer
    std::vector<uint4> s;
    explicit B16(size_t n) : s((n + 7) / 8 + 1) { memset(s.data(), 0x5a, s.size() * 16); }
    __nv_bfloat16* p() { return reinterpret_cast<__nv_bfloat16*>(s.data()); }
};
static unsigned ld8(unsigned c, unsigned pad) { return (c + 7) / 8 * 8 + pad; }
static B16 to_bf16(const float* src, unsigned rows, unsigned cols, unsigned ld) {
    B16 b((size_t)rows * ld);
    launch({3}, {256}, [&] { matmul_to_bf16(b.p(), src, rows, cols, ld); });
    return b;
}
static void check_async_twins(unsigned m, unsigned k, unsigned n, size_t off, unsigned pad) {
    char name[160];
    Buf x = input((size_t)m * k, off), w = input((size_t)n * k, off), dy = input((size_t)m * n, off);
    const unsigned lk = ld8(k, pad), ln = ld8(n, pad);
    B16 xb = to_bf16(x.p(), m, k, lk), wb = to_bf16(w.p(), n, k, lk), dyb = to_bf16(dy.p(), m, n, ln);
    // the copies: bf16 (RNE) of the source, zeros in the padding
    size_t bad = 0;
    for (unsigned i = 0; i < m; ++i)
        for (unsigned c = 0; c < lk; ++c) {
            const __nv_bfloat16 want = __float2bfloat16_rn(c < k ? x.p()[(size_t)i * k + c] : 0.0f);
            bad += xb.p()[(size_t)i * lk + c].x != want.x;
        }
    snprintf(name, 160, "to_bf16    rows=%u cols=%u ld=%u off=%zu (bit diffs)", m, k, lk, off);
    report(name, (double)bad, 0.5);
    // The kernels must not read the padding (their copies zero-fill past the extent): poison it.
    auto poison = [](B16& t, unsigned rows, unsigned cols, unsigned ld) {
        for (unsigned i = 0; i < rows; ++i)
            for (unsigned c = cols; c < ld; ++c) t.p()[(size_t)i * ld + c].x = 0x7fc0;  // NaN
    };
    poison(xb, m, k, lk), poison(wb, n, k, lk), poison(dyb, m, n, ln);
    {
        Buf a = output((size_t)m * n, 0, nullptr), b = output((size_t)m * n, off, nullptr);
        launch({blocks(m, n)}, {256}, [&] { matmul_fwd(a.p(), x.p(), w.p(), m, k, n); });
        launch({blocks(m, n)}, {256}, [&] { matmul_fwd_async(b.p(), xb.p(), wb.p(), m, k, n, lk, lk); });
        snprintf(name, 160, "fwd_async   m=%u k=%u n=%u off=%zu pad=%u (bit diffs)", m, k, n, off, pad);
        report(name, (double)(float_diffs(a.p(), b.p(), (size_t)m * n) + guards_touched(b, (size_t)m * n)), 0.5);
        std::vector<__nv_bfloat16> y16((size_t)m * n);
        launch({blocks(m, n)}, {256}, [&] { matmul_fwd_async_bf16(y16.data(), xb.p(), wb.p(), m, k, n, lk, lk); });
        std::vector<__nv_bfloat16> want((size_t)m * n);
        for (size_t i = 0; i < want.size(); ++i) want[i] = __float2bfloat16_rn(a.p()[i]);
        snprintf(name, 160, "fwd_async_bf16 m=%u k=%u n=%u (bit diffs)", m, k, n);
        report(name, (double)bf16_diffs(y16.data(), want.data(), want.size()), 0.5);
    }
    {
        Buf a = output((size_t)m * k, 0, nullptr), b = output((size_t)m * k, off, nullptr);
        launch({blocks(m, k)}, {256}, [&] { matmul_bwd_x(a.p(), dy.p(), w.p(), m, k, n); });
        launch({blocks(m, k)}, {256}, [&] { matmul_bwd_x_async(b.p(), dyb.p(), wb.p(), m, k, n, ln, lk); });
        snprintf(name, 160, "bwd_x_async m=%u k=%u n=%u off=%zu pad=%u (bit diffs)", m, k, n, off, pad);
        report(name, (double)(float_diffs(a.p(), b.p(), (size_t)m * k) + guards_touched(b, (size_t)m * k)), 0.5);
    }
    for (int acc : {0, 1}) {
        std::vector<float> prior = uni((size_t)n * k, -2, 2);
        Buf a = output((size_t)n * k, 0, acc ? &prior : nullptr);
        Buf b = output((size_t)n * k, off, acc ? &prior : nullptr);
        launch({blocks(n, k)}, {256}, [&] { matmul_bwd_w(a.p(), dy.p(), x.p(), m, k, n, acc); });
        launch({blocks(n, k)}, {256}, [&] { matmul_bwd_w_async(b.p(), dyb.p(), xb.p(), m, k, n, ln, lk, acc); });
        snprintf(name, 160, "bwd_w_async m=%u k=%u n=%u off=%zu pad=%u acc=%d (bit diffs)", m, k, n, off, pad, acc);
        report(name, (double)(float_diffs(a.p(), b.p(), (size_t)n * k) + guards_touched(b, (size_t)n * k)), 0.5);
    }
    // A bf16 dy used as it is (the logits' gradient; n a multiple of 8, ld n), against the
    // bf16-dy kernels of version 1.
    if (n % 8 == 0 && pad == 0) {
        B16 d16((size_t)m * n);
        launch({3}, {256}, [&] { matmul_to_bf16_from_bf16(d16.p(), dyb.p(), m, n, n); });
        Buf a = output((size_t)m * k, 0, nullptr), b = output((size_t)m * k, 0, nullptr);
        launch({blocks(m, k)}, {256}, [&] { matmul_bwd_x_bf16(a.p(), d16.p(), w.p(), m, k, n); });
        launch({blocks(m, k)}, {256}, [&] { matmul_bwd_x_async(b.p(), d16.p(), wb.p(), m, k, n, n, lk); });
        snprintf(name, 160, "bwd_x_async bf16 dy as is m=%u k=%u n=%u (bit diffs)", m, k, n);
        report(name, (double)float_diffs(a.p(), b.p(), (size_t)m * k), 0.5);
        Buf c = output((size_t)n * k, 0, nullptr), d = output((size_t)n * k, 0, nullptr);
        launch({blocks(n, k)}, {256}, [&] { matmul_bwd_w_bf16(c.p(), d16.p(), x.p(), m, k, n, 0); });
        launch({blocks(n, k)}, {256}, [&] { matmul_bwd_w_async(d.p(), d16.p(), xb.p(), m, k, n, n, lk, 0); });
        snprintf(name, 160, "bwd_w_async bf16 dy as is m=%u k=%u n=%u (bit diffs)", m, k, n);
        report(name, (double)float_diffs(c.p(), d.p(), (size_t)n * k), 0.5);
    }
}

// k = 0: y and dW (overwrite) are zeros, dW with accumulate keeps its prior values exactly; m = 0
// for bwd_w is the same empty reduction.
static void check_empty_reduction() {
    char name[160];
    const unsigned m = 9, n = 6;
    Buf y = output((size_t)m * n, 0, nullptr);
    launch({blocks(m, n)}, {256}, [&] { matmul_fwd(y.p(), nullptr, nullptr, m, 0, n); });
    double bad = 0;
    for (size_t i = 0; i < (size_t)m * n; ++i) bad += y.p()[i] != 0.0f;
    snprintf(name, 160, "fwd k=0 writes zeros (non-zeros)");
    report(name, bad + guards_touched(y, (size_t)m * n), 0.5);
    const unsigned k = 5;
    std::vector<float> prior = uni((size_t)n * k, -2, 2);
    Buf dw = output((size_t)n * k, 1, &prior);
    launch({blocks(n, k)}, {256}, [&] { matmul_bwd_w(dw.p(), nullptr, nullptr, 0, k, n, 1); });
    bad = memcmp(dw.p(), prior.data(), prior.size() * 4) != 0;
    snprintf(name, 160, "bwd_w m=0 acc=1 leaves dW unchanged (bit diffs)");
    report(name, bad + guards_touched(dw, (size_t)n * k), 0.5);
    Buf y2 = output((size_t)m * n, 0, nullptr);
    launch({blocks(m, n)}, {256}, [&] { matmul_fwd_async(y2.p(), nullptr, nullptr, m, 0, n, 8, 8); });
    bad = 0;
    for (size_t i = 0; i < (size_t)m * n; ++i) bad += y2.p()[i] != 0.0f;
    snprintf(name, 160, "fwd_async k=0 writes zeros (non-zeros)");
    report(name, bad + guards_touched(y2, (size_t)m * n), 0.5);
    Buf dw2 = output((size_t)n * k, 1, &prior);
    launch({blocks(n, k)}, {256}, [&] { matmul_bwd_w_async(dw2.p(), nullptr, nullptr, 0, k, n, 8, 8, 1); });
    bad = memcmp(dw2.p(), prior.data(), prior.size() * 4) != 0;
    snprintf(name, 160, "bwd_w_async m=0 acc=1 leaves dW unchanged (bit diffs)");
    report(name, bad + guards_touched(dw2, (size_t)n * k), 0.5);
}

int main() {
    rng.seed(7);
    // (m, k, n)
    const unsigned shapes[][3] = {
        {1, 1, 1}, {7, 13, 5}, {65, 33, 129}, {130, 40, 257}, {128, 64, 256}, {33, 96, 100},
        {1100, 8, 3}, {1100, 12, 260},
    };
    for (auto& s : shapes) {
        check_shape(s[0], s[1], s[2], 0, 0);
        check_shape(s[0], s[1], s[2], 1, 1);
    }
    check_shape(130, 40, 257, 0, 3);  // aligned inputs (float4 loads), unaligned output
    check_shape(130, 40, 257, 2, 0);  // 8-byte-aligned inputs (scalar loads), aligned output
    check_empty_reduction();
    // (m, k, n, fp32 offset, bf16 offset): vector paths, 8-byte-aligned bf16, scalar paths, and
    // n not a multiple of 8 (bf16 rows not 16-byte aligned: scalar stores and loads).
    const unsigned twins[][5] = {
        {130, 40, 264, 0, 0}, {130, 40, 264, 0, 4}, {130, 40, 264, 1, 1}, {65, 33, 129, 0, 0},
        {7, 13, 5, 1, 0}, {1100, 12, 260, 0, 0},
    };
    for (auto& t : twins) check_bf16_twins(t[0], t[1], t[2], t[3], t[4]);
    // (m, k, n, offset of the fp32 sources, extra padding of the bf16 copies)
    const unsigned async_twins[][5] = {
        {1, 1, 1, 0, 0},     {7, 13, 5, 1, 0},    {65, 33, 129, 0, 8}, {130, 40, 264, 0, 0},
        {130, 40, 264, 1, 8}, {33, 200, 100, 0, 0}, {1100, 12, 260, 0, 0}, {260, 100, 136, 3, 0},
    };
    for (auto& t : async_twins) check_async_twins(t[0], t[1], t[2], t[3], t[4]);
    return finish();
}
